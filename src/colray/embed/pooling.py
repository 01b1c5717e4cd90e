"""Token pooling for documents: fewer vectors per document at a measured cost in retrieval.

Hierarchical clustering of a document's token vectors (Ward on cosine distance, as PyLate's
`pool_factor` and Clavié et al. 2024); each cluster is stored as its mean, renormalised.
"""

from __future__ import annotations

import numpy as np

PROTECTED_TOKENS = 1  # the first vector ([CLS] / the document marker) is never merged


def pool_tokens(vectors: np.ndarray, pool_factor: int) -> np.ndarray:
    """About len(vectors) / pool_factor vectors: the means of clusters of similar tokens."""
    if pool_factor <= 1 or len(vectors) <= PROTECTED_TOKENS + 1:
        return vectors
    # Imported here: scipy.cluster takes ~0.7 s to import, paid by every embedder actor's
    # start-up even when pooling is off (most runs).
    from scipy.cluster.hierarchy import fcluster, linkage

    kept, rest = vectors[:PROTECTED_TOKENS], vectors[PROTECTED_TOKENS:]
    clusters = max(1, len(rest) // pool_factor)
    if clusters >= len(rest):
        return vectors
    distances = np.clip(1.0 - rest @ rest.T, 0.0, 2.0).astype(np.float64)
    condensed = distances[np.triu_indices(len(rest), k=1)]
    labels = fcluster(linkage(condensed, method="ward"), t=clusters, criterion="maxclust")
    pooled = np.stack([rest[labels == label].mean(axis=0) for label in np.unique(labels)])
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    return np.concatenate([kept, pooled.astype(np.float32)])
