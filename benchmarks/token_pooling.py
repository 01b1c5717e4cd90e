"""Token pooling's effect on retrieval: vectors stored vs known-item search quality.

Corpus: module docstrings of Python's standard library. Each docstring's first sentence is a
query and the rest of it is the document that should come back (known-item search), so the
relevance labels come from the data, not from us. Documents are embedded once; each
pool_factor pools those same vectors, and exact MaxSim ranks every document per query
(what Qdrant's MaxSim computes). Printed: vectors kept, MRR@10, recall@1/@10, agreement of
the top 10 with the unpooled ranking, and the pooling's CPU time per document.

    uv run python benchmarks/token_pooling.py [--factors 1,2,3,4] [--model minilm-token]
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np

from colray.config import EmbedConfig
from colray.demo import stdlib_docstrings
from colray.embed import load_embedder
from colray.embed.pooling import pool_tokens

MIN_DOC_WORDS = 15


def known_items() -> list[tuple[str, str]]:
    """(query, document) pairs: a docstring's first sentence, and the rest of it."""
    pairs = []
    for row in stdlib_docstrings(modules_only=True):
        text = row["text"].strip()
        parts = re.split(r"(?<=[.!?])\s+|\n\s*\n", text, maxsplit=1)
        if len(parts) == 2 and len(parts[1].split()) >= MIN_DOC_WORDS and len(parts[0]) > 10:
            pairs.append((parts[0], parts[1]))
    return pairs


def rankings(queries: list[np.ndarray], docs: list[np.ndarray], k: int) -> np.ndarray:
    scores = np.array([[float((q @ d.T).max(axis=1).sum()) for d in docs] for q in queries])
    return np.argsort(-scores, axis=1)[:, :k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--factors", default="1,2,3,4")
    parser.add_argument("--model", default="minilm-token")
    args = parser.parse_args()
    factors = [int(f) for f in args.factors.split(",")]
    pairs = known_items()
    embedder = load_embedder(EmbedConfig(model=args.model))
    docs = embedder.embed_documents([doc for _, doc in pairs])
    queries = [embedder.embed_query(query) for query, _ in pairs]
    target = np.arange(len(pairs))
    full_top = None
    rows = []
    for factor in factors:
        start = time.process_time()
        pooled = [pool_tokens(d, factor) for d in docs]
        pool_ms = (time.process_time() - start) / len(docs) * 1000
        top = rankings(queries, pooled, 10)
        if full_top is None:
            full_top = top
        ranks = [np.where(row == t)[0] for row, t in zip(top, target, strict=True)]
        mrr = float(np.mean([1 / (r[0] + 1) if len(r) else 0.0 for r in ranks]))
        recall1 = float(np.mean(top[:, 0] == target))
        recall10 = float(np.mean([len(r) > 0 for r in ranks]))
        overlap = float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top, full_top, strict=True)])
        )
        kept = sum(len(p) for p in pooled) / sum(len(d) for d in docs)
        rows.append((factor, kept, mrr, recall1, recall10, overlap, pool_ms))
    print(f"{len(pairs)} known-item queries over {len(pairs)} documents, model {args.model}")
    print(f"{'pool_factor':>11}{'vectors kept':>14}{'MRR@10':>9}{'R@1':>7}{'R@10':>7}"
          f"{'top-10 overlap':>16}{'pool ms/doc':>13}")  # fmt: skip
    for factor, kept, mrr, r1, r10, overlap, ms in rows:
        print(
            f"{factor:>11}{kept:>14.2f}{mrr:>9.3f}{r1:>7.3f}{r10:>7.3f}{overlap:>16.2f}{ms:>13.2f}"
        )
    base = rows[0]
    print(" ".join(f"f{f}: vectors={k:.2f}x mrr={m / base[2]:.2f}x" for f, k, m, *_ in rows))


if __name__ == "__main__":
    main()
