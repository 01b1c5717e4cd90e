"""Flat scaling: cost per row and peak memory of the pipeline at growing corpus sizes.

The corpus is real text: docstrings of the installed packages' sources (parsed, not
imported; ~83k here, then ~38k more from their tests and private modules), cached as Parquet
on first use. At each size, in this process on the same rows: the embed-then-upsert loop of
the Qdrant tutorials (unsorted groups of 32), the same loop with colray's length-sorted
256-row groups (whose embedder calls alone are the raw embedder's time), and the pipeline.
Peak PSS covers the driver and every Ray worker.

    uv run python benchmarks/scaling.py [--sizes 1000,10000,50000] [--model minilm-token]
    uv run python benchmarks/scaling.py --sizes 10000,100000 --loop-sizes 10000  # ~50 min
    uv run --group bench python benchmarks/scaling.py --plot-only  # redraw docs/scaling.png

Each run also writes docs/scaling.json and, with matplotlib (the bench group), docs/scaling.png:
throughput and peak memory against the corpus size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from text_ingest import (  # benchmarks/ is on sys.path when run as a script
    NO_HNSW_KB,
    PeakRss,
    embed_then_upsert,
    spilled_bytes,
    timed,
)

import colray
from colray.config import load_settings
from colray.demo import python_docstrings, write_corpus
from colray.embed import load_embedder
from colray.pipeline import ensure_ray

MB = 2**20
DOCS = Path(__file__).resolve().parent.parent / "docs"
CACHE = Path.home() / ".cache" / "colray" / "bench"


def corpus_rows(size: int) -> list[dict[str, str]]:
    """The first `size` docstrings of the installed packages, parsed once and cached.

    Library modules come first, so a larger corpus starts with the rows of every smaller one.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    cached = sorted(CACHE.glob("docstrings-*.parquet"), key=lambda p: int(p.stem.split("-")[1]))
    for path in cached:
        if int(path.stem.split("-")[1]) >= size:
            return pq.read_table(path).slice(0, size).to_pylist()
    root = Path(sysconfig.get_paths()["purelib"])
    docstrings = itertools.chain(
        python_docstrings(root, public_only=False),
        python_docstrings(root, public_only=False, set_aside=True),
    )
    rows = list(itertools.islice(docstrings, size))
    if len(rows) < size:
        raise SystemExit(f"only {len(rows)} docstrings under {root}")
    write_corpus(rows, CACHE / f"docstrings-{size}.parquet")
    return rows


def measure(
    size: int, model: str, doc_maxlen: int, loops: set[str], threads: int
) -> tuple[dict[str, float], dict[str, PeakRss]]:
    """Seconds and peak memory of the pipeline and of the `loops` ("sorted", "tutorial") on
    the first `size` rows of the corpus."""
    import ray  # after colray, whose import sets Ray's environment defaults

    rows = corpus_rows(size)
    work = Path(tempfile.mkdtemp(prefix="colray-scale-"))
    corpus = write_corpus(rows, work / "corpus", rows_per_file=5000)
    settings = load_settings(
        None,
        base={
            "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                       "payload_columns": ["title"]},
            "embed": {"model": model, "rows_per_call": 256, "doc_maxlen": doc_maxlen,
                      "threads_per_actor": threads},
            "sink": {"kind": "edge", "path": str(work / "store"),
                     "indexing_threshold_kb": NO_HNSW_KB},
            "run": {"dir": str(work / "runs"), "progress": False},
        },
    )  # fmt: skip
    embedder = load_embedder(settings.embed)  # the loops' embedder: as many threads as the actor
    embedder.embed_documents([r["text"] for r in rows[:64]])  # first-call allocations
    if not ray.is_initialized():  # started once, before timing, as a cluster would be
        ensure_ray(settings)
        ray.data.range(10).map_batches(lambda batch: batch).take_all()

    timings: dict[str, float] = {}
    memory: dict[str, PeakRss] = {}

    def sorted_loop() -> None:
        timings["raw"] = embed_then_upsert(settings, embedder, rows, 256, work / "sorted")

    def tutorial_loop() -> None:
        embed_then_upsert(settings, embedder, rows, 32, work / "tutorial")

    reports = []
    variants = {"sorted": sorted_loop, "tutorial": tutorial_loop,
                "pipeline": lambda: reports.append(colray.ingest(settings))}  # fmt: skip
    for name, fn in variants.items():
        if name == "pipeline" or name in loops:
            timings[name], memory[name] = timed(fn)
    assert reports[0].points_written == size, reports[0]
    timings["spilled_mb"] = spilled_bytes() / MB  # since the cluster started: all sizes so far
    # Share of the run the embedder actor spent inside embed calls: writes that made it wait,
    # or anything else that starved it, show up as a lower share.
    embed_s = reports[0].stages_s.get("embed", 0.0) / settings.embed.num_actors
    timings["embed_busy"] = embed_s / reports[0].duration_s
    shutil.rmtree(work, ignore_errors=True)
    return timings, memory


def save(results: list[tuple[int, dict[str, float], dict[str, PeakRss]]], args) -> list[dict]:
    """The run's numbers as docs/scaling.json: docs/s per variant and peak PSS in MB."""
    rows = []
    for size, timings, memory in results:
        row: dict = {"rows": size}
        row |= {f"{n}_docs_s": size / timings[n] for n in ("raw", "tutorial", "pipeline")
                if n in timings}  # fmt: skip
        for name, peak in memory.items():
            row[f"{name}_pss_mb"] = peak.peak / MB
            row[f"{name}_working_mb"] = peak.peak_working / MB
        row["embed_busy"] = timings["embed_busy"]
        rows.append(row)
    (DOCS / "scaling.json").write_text(json.dumps(
        {"model": args.model, "doc_maxlen": args.doc_maxlen, "cores": os.cpu_count(),
         "embed_threads": args.embed_threads, "results": rows}, indent=2) + "\n")  # fmt: skip
    return rows


def plot(measured: dict, out: Path) -> None:
    """Throughput and peak memory against corpus size, one line per variant."""
    try:
        import matplotlib
    except ImportError:  # the bench group is not installed: the JSON is still written
        print("plot skipped: matplotlib is in the bench group (uv run --group bench ...)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = measured["results"]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    labels = {"raw": "raw embedder (sorted loop)", "tutorial": "tutorials' loop",
              "pipeline": "colray pipeline"}  # fmt: skip
    for name, label in labels.items():
        points = [(r["rows"], r[f"{name}_docs_s"]) for r in rows if f"{name}_docs_s" in r]
        if points:
            speed.plot(*zip(*points, strict=True), marker="o", label=label)
    speed.set(xscale="log", xlabel="rows in the corpus", ylabel="docs/s", ylim=(0, None),
              title=f"Throughput ({measured['cores']} cores, {measured['model']})")  # fmt: skip
    speed.legend()
    for key, label, style in [("pipeline_pss_mb", "pipeline: all PSS (incl. mapped store)", "-"),
                              ("pipeline_working_mb", "pipeline: working (anon + object store)",
                               "--"),
                              ("sorted_working_mb", "sorted loop: working", ":")]:  # fmt: skip
        points = [(r["rows"], r[key] / 1024) for r in rows if key in r]
        if points:
            memory.plot(*zip(*points, strict=True), marker="o", linestyle=style, label=label)
    memory.set(xscale="log", xlabel="rows in the corpus", ylabel="peak GB", ylim=(0, None),
               title="Peak memory, driver + every Ray worker")  # fmt: skip
    memory.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--model", default="minilm-token")
    parser.add_argument("--doc-maxlen", type=int, default=128, help="tokens kept per document")
    parser.add_argument(
        "--embed-threads",
        type=int,
        default=os.cpu_count(),
        help="inference threads, in the loops and in the pipeline's actor (default: every "
        "core). Fewer leaves the writer a core of its own, as a GPU embedder would",
    )
    parser.add_argument(
        "--tutorial-sizes",
        default="1000,10000",
        help="sizes at which the tutorials' unsorted 32-row loop also runs (it is ~3x slower)",
    )
    parser.add_argument(
        "--loop-sizes",
        default=None,
        help="sizes at which the sorted loop (the raw embedder) runs; default: every size. "
        "Leave the largest out to measure the pipeline alone there (cost per row, memory)",
    )
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw docs/scaling.png from docs/scaling.json, measure nothing")  # fmt: skip
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((DOCS / "scaling.json").read_text()), DOCS / "scaling.png")
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    tutorial_sizes = {int(s) for s in args.tutorial_sizes.split(",") if s}
    chosen_loop_sizes = args.sizes if args.loop_sizes is None else args.loop_sizes
    loop_sizes = {int(s) for s in chosen_loop_sizes.split(",") if s}

    def loops(size: int) -> set[str]:
        chosen = {"sorted": size in loop_sizes, "tutorial": size in tutorial_sizes}
        return {name for name, wanted in chosen.items() if wanted}

    def rate(size: int, timings: dict[str, float], name: str) -> float:
        return size / timings[name]

    def cell(size: int, timings: dict[str, float], name: str, width: int) -> str:
        return f"{rate(size, timings, name):>{width}.1f}" if name in timings else f"{'-':>{width}}"

    print(f"corpus: docstrings of installed packages, model {args.model}, doc_maxlen "
          f"{args.doc_maxlen}, {args.embed_threads} embed threads on {os.cpu_count()} cores; "
          "docs/s, peak PSS MB (all / working)")  # fmt: skip
    print(f"{'rows':>7}{'raw':>8}{'tutorial':>10}{'sorted':>8}{'pipeline':>10}{'ms/row':>8}"
          f"{'loop PSS':>13}{'pipeline PSS':>15}{'spilled MB':>12}{'embed busy':>12}")  # fmt: skip
    results = []
    for size in sizes:  # each row as soon as it is measured: the large sizes take long
        timings, memory = measure(
            size, args.model, args.doc_maxlen, loops(size), args.embed_threads
        )
        results.append((size, timings, memory))
        pipe = memory["pipeline"]
        loop = memory.get("sorted")
        loop_pss = (
            f"{loop.peak / MB:>7.0f} /{loop.peak_working / MB:>5.0f}" if loop else f"{'-':>13}"
        )
        print(f"{size:>7}{cell(size, timings, 'raw', 8)}{cell(size, timings, 'tutorial', 10)}"
              f"{cell(size, timings, 'sorted', 8)}{cell(size, timings, 'pipeline', 10)}"
              f"{1000 * timings['pipeline'] / size:>8.1f}"
              f"{loop_pss}"
              f"{pipe.peak / MB:>9.0f} /{pipe.peak_working / MB:>5.0f}"
              f"{timings['spilled_mb']:>12.0f}{timings['embed_busy']:>12.2f}", flush=True)  # fmt: skip
    summary = []
    for size, timings, _ in results:
        pipe = rate(size, timings, "pipeline")
        if "sorted" in timings:
            summary.append(f"pipeline/raw@{size}={pipe / rate(size, timings, 'raw'):.2f}")
            summary.append(f"pipeline/sorted@{size}={pipe / rate(size, timings, 'sorted'):.2f}")
        if "tutorial" in timings:
            summary.append(f"pipeline/tutorial@{size}={pipe / rate(size, timings, 'tutorial'):.2f}")
    if len(results) > 1:
        (small, small_t, small_m), (big, big_t, big_m) = results[-2], results[-1]
        summary.append(
            f"working_pss_{big}/{small}="
            f"{big_m['pipeline'].peak_working / small_m['pipeline'].peak_working:.2f}"
        )
        summary.append(f"pss_{big}/{small}={big_m['pipeline'].peak / small_m['pipeline'].peak:.2f}")
        summary.append(f"ms_per_row_{big}/{small}="
                       f"{(big_t['pipeline'] / big) / (small_t['pipeline'] / small):.2f}")  # fmt: skip
    print(" ".join(summary))
    save(results, args)
    plot(json.loads((DOCS / "scaling.json").read_text()), DOCS / "scaling.png")


if __name__ == "__main__":
    main()
