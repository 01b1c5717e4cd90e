"""Flat scaling: cost per row and peak memory of the pipeline at growing corpus sizes.

The corpus is real text: docstrings of the installed packages' sources (parsed, not
imported; 80k+ here), cached as Parquet on first use. At each size the raw embedder and the
pipeline run side by side in this process; peak PSS covers the driver and every Ray worker.

    uv run python benchmarks/scaling.py [--sizes 1000,10000,50000] [--model minilm-token]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from text_ingest import NO_HNSW_KB, timed  # benchmarks/ is on sys.path when run as a script

from colray.config import load_settings
from colray.demo import python_docstrings, write_corpus
from colray.embed import load_embedder
from colray.pipeline import run_ingest

CACHE = Path.home() / ".cache" / "colray" / "bench"


def corpus_rows(size: int) -> list[dict[str, str]]:
    """The first `size` docstrings of the installed packages, parsed once and cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = sorted(CACHE.glob("docstrings-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
    for path in cached:
        if int(path.stem.split("-")[1]) >= size:
            return pq.read_table(path).slice(0, size).to_pylist()
    root = Path(sysconfig.get_paths()["purelib"])
    rows = list(itertools.islice(python_docstrings(root, public_only=False), size))
    if len(rows) < size:
        raise SystemExit(f"only {len(rows)} docstrings under {root}")
    write_corpus(rows, CACHE / f"docstrings-{size}.parquet")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--model", default="minilm-token")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    import ray  # after colray, whose import sets Ray's environment defaults

    results = []
    for size in sizes:
        rows = corpus_rows(size)
        work = Path(tempfile.mkdtemp(prefix="colray-scale-"))
        corpus = write_corpus(rows, work / "corpus", rows_per_file=5000)
        settings = load_settings(
            None,
            base={
                "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                           "payload_columns": ["title"]},
                "embed": {"model": args.model, "rows_per_call": 256},
                "sink": {"kind": "edge", "path": str(work / "store"),
                         "indexing_threshold_kb": NO_HNSW_KB},
                "run": {"dir": str(work / "runs"), "progress": False},
            },
        )  # fmt: skip
        embedder = load_embedder(
            settings.embed.model_copy(update={"threads_per_actor": os.cpu_count()})
        )
        texts = [r["text"] for r in rows]

        def raw(embedder=embedder, texts=texts) -> None:
            for start in range(0, len(texts), 256):
                embedder.embed_documents(texts[start : start + 256])

        if not ray.is_initialized():  # started once, before timing, as a cluster would be
            from colray.pipeline import ensure_ray

            ensure_ray(settings)
            ray.data.range(10).map_batches(lambda batch: batch).take_all()
        raw_s, raw_mem = timed(raw)
        reports = []
        pipe_s, pipe_mem = timed(
            lambda settings=settings, reports=reports: reports.append(run_ingest(settings))
        )
        assert reports[0].points_written == size, reports[0]
        results.append((size, size / raw_s, size / pipe_s, raw_mem.peak, pipe_mem.peak))
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'rows':>7}{'raw docs/s':>12}{'pipeline docs/s':>17}{'ratio':>7}"
          f"{'ms/row':>8}{'raw PSS MB':>12}{'pipeline PSS MB':>17}")  # fmt: skip
    for size, raw_rate, pipe_rate, raw_peak, pipe_peak in results:
        print(f"{size:>7}{raw_rate:>12.1f}{pipe_rate:>17.1f}{pipe_rate / raw_rate:>7.2f}"
              f"{1000 / pipe_rate:>8.1f}{raw_peak / 2**20:>12.0f}{pipe_peak / 2**20:>17.0f}")  # fmt: skip
    summary = [f"pipeline/raw@{s}={p / r:.2f}" for s, r, p, *_ in results]
    if len(results) > 1:
        first, last = results[-2], results[-1]
        summary.append(f"pss_{last[0]}/pss_{first[0]}={last[4] / first[4]:.2f}")
        summary.append(f"ms_per_row_{last[0]}/{first[0]}={first[2] / last[2]:.2f}")
    print(" ".join(summary))


if __name__ == "__main__":
    main()
