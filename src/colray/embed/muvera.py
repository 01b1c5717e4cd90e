"""MUVERA fixed-dimensional encodings (Google, arXiv 2405.19504) of multivectors, the same as
fastembed's `fastembed.postprocess.Muvera` gives (to float32 precision), vectorised with numpy.

Same parameters, same random draws in the same order, the same document and query rules, so a
user who encodes a query with fastembed gets the vector colray would. fastembed loops over
tokens in Python (~4 ms per 70-token document here); this is one float32 product per document
plus small bucket sums (~0.5 ms), with the SimHash signs decided exactly as in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from colray.config import EmbedConfig

# fastembed's defaults: 20 repetitions x 2**5 buckets x 16 projected dims = 10,240 dims.
K_SIM, DIM_PROJ, R_REPS, SEED = 5, 16, 20, 42
_NO_BUCKET = 65  # larger than any Hamming distance of 64-bit bucket ids (fastembed's sentinel)
# Products of a token and a plane nearer zero than this share of the token's norm are decided
# in float64; float32's own error on them is below a thousandth of that.
_SIGN_MARGIN = 1e-3


def encoding_size(k_sim: int = K_SIM, dim_proj: int = DIM_PROJ, r_reps: int = R_REPS) -> int:
    return r_reps * 2**k_sim * dim_proj


def muvera_for(cfg: EmbedConfig, dim: int) -> Muvera:
    """The encoder a job's settings name, for `dim`-sized token vectors."""
    return Muvera(dim, cfg.muvera_k_sim, cfg.muvera_dim_proj, cfg.muvera_r_reps, cfg.muvera_seed)


class Muvera:
    """Encodes (n, dim) multivectors into one vector of `embedding_size` dims; documents and
    queries differ (see `encode_document`, `encode_query`)."""

    def __init__(
        self,
        dim: int,
        k_sim: int = K_SIM,
        dim_proj: int = DIM_PROJ,
        r_reps: int = R_REPS,
        random_seed: int = SEED,
    ):
        if dim_proj > dim:
            raise ValueError(
                f"cannot project to more dims than the vectors have ({dim_proj} > {dim})"
            )
        self.dim, self.k_sim, self.dim_proj, self.r_reps = dim, k_sim, dim_proj, r_reps
        self.buckets = 2**k_sim
        # fastembed's draws, in its order: each repetition's SimHash planes, then all projections.
        rng = np.random.default_rng(random_seed)
        planes = [rng.normal(size=(dim, k_sim)) for _ in range(r_reps)]
        projections = rng.choice([-1, 1], size=(r_reps, dim, dim_proj))
        self.planes = np.concatenate(planes, axis=1)  # (dim, r_reps * k_sim), float64
        self.sign_columns = r_reps * k_sim
        # Every repetition's planes and scaled projection side by side: one float32 product per
        # document gives all the SimHash products and all the projected tokens.
        self.projects = dim_proj < dim
        weights = [self.planes]
        if self.projects:
            weights.append(
                projections.transpose(1, 0, 2).reshape(dim, r_reps * dim_proj) / np.sqrt(dim_proj)
            )
        self.weights = np.concatenate(weights, axis=1).astype(np.float32)
        self.bit_values = 1 << np.arange(k_sim)
        ids = np.arange(self.buckets, dtype=np.uint64)
        xor = np.bitwise_xor(ids[:, None], ids[None, :])
        self.hamming = np.unpackbits(xor.view(np.uint8).reshape(self.buckets, self.buckets, 8),
                                     axis=2).sum(axis=2)  # fmt: skip

    @property
    def embedding_size(self) -> int:
        return encoding_size(self.k_sim, self.dim_proj, self.r_reps)

    def encode_document(self, vectors: np.ndarray) -> np.ndarray:
        """Per bucket the mean of its tokens; an empty bucket takes the first token of the
        nearest non-empty bucket (Hamming distance of bucket ids, lowest id on ties)."""
        return self._encode(vectors, document=True)

    def encode_query(self, vectors: np.ndarray) -> np.ndarray:
        """Per bucket the sum of its tokens; empty buckets stay zero."""
        return self._encode(vectors, document=False)

    def _encode(self, vectors: np.ndarray, *, document: bool) -> np.ndarray:
        x = np.ascontiguousarray(vectors, np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim or len(x) == 0:
            raise ValueError(f"expected vectors of shape (n >= 1, {self.dim}), got {x.shape}")
        n, reps = len(x), self.r_reps
        products = x @ self.weights
        signs = self._signs(x, products[:, : self.sign_columns]).reshape(n, reps, self.k_sim)
        bucket_of = (signs @ self.bit_values).T  # (reps, n)
        if self.projects:
            projected = products[:, self.sign_columns :].reshape(n, reps, self.dim_proj)
            tokens = projected.transpose(1, 0, 2).astype(np.float64)
        else:
            tokens = np.broadcast_to(x.astype(np.float64), (reps, n, self.dim))
        member = bucket_of[:, None, :] == np.arange(self.buckets)[None, :, None]  # (reps, B, n)
        centers = member.astype(np.float64) @ tokens  # (reps, B, projected dims)
        if document:
            slots = bucket_of + (np.arange(reps) * self.buckets)[:, None]
            counts = np.bincount(slots.ravel(), minlength=reps * self.buckets).reshape(reps, -1)
            filled = counts > 0
            centers[filled] /= counts[filled][:, None]
            if not filled.all():
                first_token = member.argmax(axis=2)  # (reps, B), valid where filled
                distance = np.where(filled[:, None, :], self.hamming[None], _NO_BUCKET)
                nearest = distance.argmin(axis=2)  # (reps, B): the nearest filled bucket
                rep, bucket = np.nonzero(~filled)
                centers[rep, bucket] = tokens[rep, first_token[rep, nearest[rep, bucket]]]
        return centers.reshape(-1).astype(np.float32)

    def _signs(self, x: np.ndarray, products: np.ndarray) -> np.ndarray:
        """Which side of each SimHash plane each token lies on, as fastembed decides it in
        float64: the few products too close to zero for float32 are recomputed so."""
        margin = _SIGN_MARGIN * np.linalg.norm(x, axis=1, keepdims=True)
        rows, columns = np.nonzero(np.abs(products) < margin)
        signs = products > 0
        if len(rows):
            exact = np.einsum("ij,ji->i", x[rows].astype(np.float64), self.planes[:, columns])
            signs[rows, columns] = exact > 0
        return signs
