"""The text first stage at scale: index build time, query latency and quality of MUVERA prefetch
+ MaxSim rerank against exact MaxSim, float16 against float32, and bytes stored per point.

The corpus is the docstrings of the installed packages (as `scaling.py` builds it): each row's
first sentence is set aside as its known-item query and the rest is the document, cut at 128
tokens. At each size, in one process:

- the pipeline ingests the documents with the MUVERA layout (multivector m=0, the encoding with
  HNSW) into Edge; its finalize time is the HNSW build on the encodings;
- the same points are copied into a store of the old layout (HNSW on the multivector) at the
  sizes in --hnsw-sizes, and its build timed; above them the build time is extrapolated;
- queries: exact MaxSim (Edge's full scan of the multivectors: its latency; and numpy over the
  stored vectors: the exact ranking), and MUVERA prefetch + rerank at each --prefetch limit;
- at --float16-sizes the points are copied into a float16 store and queried the same way;
- at --cosine-sizes they are copied into a store whose encodings are compared by cosine
  instead of dot product (the README's choice between the two);
- at --pool-sizes the pipeline runs again with pool_factor 2.

    uv run --group bench python benchmarks/first_stage.py --sizes 10000      # ~25 min
    uv run --group bench python benchmarks/first_stage.py --sizes 10000,100000 --hnsw-sizes 2000,5000,10000
    # one size again, its variants merged into an earlier run's results (and the plot redrawn):
    uv run --group bench python benchmarks/first_stage.py --sizes 100000 --merge docs/first_stage.json ...
    # a long run that may be interrupted: --work keeps its stores, and a re-run reuses them
    uv run --group bench python benchmarks/first_stage.py --sizes 100000 --work /tmp/fs-work ...
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scaling import corpus_rows  # benchmarks/ is on sys.path when run as a script

import colray
from colray.config import EmbedConfig, Settings, load_settings
from colray.demo import write_corpus
from colray.embed import load_embedder
from colray.embed.muvera import muvera_for
from colray.layout import QueryPlan, VectorSpec, text_layout
from colray.pipeline import ensure_ray
from colray.sink import Hit, Point, open_prepared_sink, open_sink

DIM = 384  # minilm-token's vectors
FDE_DIMS = 10_240  # MUVERA at fastembed's defaults
DOC_MAXLEN = 128
MIN_DOC_WORDS = 12
DEFAULT_PREFETCH = EmbedConfig.model_fields["prefetch_limit"].default
DOCS = Path(__file__).resolve().parents[1] / "docs"


def known_items(size: int, queries: int) -> tuple[list[dict[str, str]], list[tuple[int, str]]]:
    """The first `size` docstrings as documents, and `queries` (row, first sentence) pairs:
    a docstring's first sentence is its query, the rest its document."""
    rows, candidates = [], []
    for i, row in enumerate(corpus_rows(size)):
        parts = re.split(r"(?<=[.!?])\s+", row["text"].strip(), maxsplit=1)
        if len(parts) == 2 and len(parts[1].split()) >= MIN_DOC_WORDS and len(parts[0]) > 20:
            candidates.append((i, parts[0]))
            row = {**row, "text": parts[1]}
        rows.append({**row, "doc_id": f"{i}:{row['doc_id']}"})
    step = max(1, len(candidates) // queries)
    return rows, candidates[::step][:queries]


@dataclass
class Variant:
    name: str
    build_s: float | None = None  # HNSW build after the load (finalize)
    build_estimated: bool = False
    latency_ms: dict[str, list[float]] = field(default_factory=dict)  # plan -> per query
    ranks: dict[str, list[int | None]] = field(default_factory=dict)  # plan -> target's rank
    bytes_per_point: float = 0.0
    first_stage_share: float | None = None


def settings_for(work: Path, corpus: Path, name: str, **embed: object) -> Settings:
    return load_settings(
        None,
        base={
            "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                       "payload_columns": ["title"], "name": "first-stage-bench"},
            "embed": {"model": "minilm-token", "doc_maxlen": DOC_MAXLEN, "rows_per_call": 256,
                      **embed},
            # Qdrant's default threshold: the HNSW build after the load is what is timed.
            "sink": {"kind": "edge", "path": str(work / name), "indexing_threshold_kb": 10000},
            "run": {"dir": str(work / "runs"), "progress": False},
        },
    )  # fmt: skip


def ingest(settings: Settings, variant: Variant) -> None:
    """The pipeline's load of `settings`' store, timed; or, where an interrupted run in the same
    --work folder left the store and its timings, those reused (a 100k load takes ~45 min)."""
    store = Path(settings.sink.path or "")
    timings = store.with_name(store.name + ".timings.json")
    if store.is_dir() and timings.is_file():
        recorded = json.loads(timings.read_text())
        variant.build_s = recorded["build_s"]
        variant.first_stage_share = recorded["first_stage_share"]
        variant.bytes_per_point = store_bytes(store) / recorded["points"]
        print(f"  reused {store} ({recorded['points']} points, build {variant.build_s:.1f}s)",
              flush=True)  # fmt: skip
        return
    report = colray.ingest(settings)
    variant.build_s = report.finalize["seconds"]
    embed_s = report.stages_s.get("embed", 0.0)
    variant.first_stage_share = (
        report.stages_s.get("first_stage", 0.0) / embed_s if embed_s else None
    )
    variant.bytes_per_point = store_bytes(store) / report.points_in_store
    timings.write_text(json.dumps({"build_s": variant.build_s, "points": report.points_in_store,
                                   "first_stage_share": variant.first_stage_share}))  # fmt: skip
    print(f"  ingested {report.points_written} in {report.duration_s:.0f}s, "
          f"build {variant.build_s:.1f}s", flush=True)  # fmt: skip


def store_bytes(path: Path) -> int:
    """Disk the store's segments take (vectors, indexes, payloads; blocks allocated, as its
    files are preallocated sparsely), without the write-ahead log."""
    return sum(f.stat().st_blocks * 512 for f in (path / "segments").rglob("*") if f.is_file())


def copy_store(source: Settings, settings: Settings, layout: list[VectorSpec], limit: int) -> float:
    """The first `limit` points of `source`'s store into a fresh store of `layout`, loaded with
    indexing off; returns the seconds its index build took."""
    reader = open_sink(source.sink, text_layout(source.embed, DIM))
    reader.open_for_reading()
    names = {spec.name for spec in layout}
    writer = open_prepared_sink(settings.sink, layout)
    try:
        batch: list[Point] = []
        for hit in itertools.islice(reader.points(with_vectors=True), limit):
            assert hit.vectors is not None
            vectors = {k: v for k, v in hit.vectors.items() if k in names}
            batch.append(Point(hit.id, vectors, hit.payload))
            if len(batch) == 64:
                writer.write(batch)
                batch = []
        if batch:
            writer.write(batch)
        reader.close()
        return writer.finalize().seconds
    finally:
        writer.close()


def exact_ranks(
    settings: Settings, queries: list[np.ndarray], targets: list[str], k: int = 10
) -> tuple[list[int | None], float]:
    """Each target's rank (0-based, within the top k) by exact MaxSim, computed in numpy over
    every stored multivector a page of points at a time; and the mean vectors per point."""
    sink = open_sink(settings.sink, text_layout(settings.embed, DIM))
    sink.open_for_reading()
    best: list[list[tuple[float, str]]] = [[] for _ in queries]
    lengths: list[int] = []
    stacked = np.concatenate(queries)
    bounds = np.cumsum([0] + [len(q) for q in queries])
    page: list[Hit] = []

    def score(points: list[Hit]) -> None:
        tokens = np.concatenate([p.vectors["text"] for p in points if p.vectors])
        starts = np.cumsum([0] + [len(p.vectors["text"]) for p in points if p.vectors])[:-1]
        per_doc = np.maximum.reduceat(stacked @ tokens.T, starts, axis=1)  # (query tokens, docs)
        sums = np.add.reduceat(per_doc, bounds[:-1], axis=0)  # (queries, docs)
        for qi, row in enumerate(sums):
            top = np.argsort(-row)[:k]
            best[qi] = sorted(
                best[qi] + [(float(row[j]), points[j].id) for j in top], reverse=True
            )[:k]

    for hit in sink.points(with_vectors=True):
        page.append(hit)
        lengths.append(len(hit.vectors["text"]) if hit.vectors else 0)
        if len(page) == 256:
            score(page)
            page = []
    if page:
        score(page)
    sink.close()
    ranked = [[pid for _, pid in row] for row in best]
    ranks = [row.index(t) if t in row else None for row, t in zip(ranked, targets, strict=True)]
    return ranks, statistics.mean(lengths)


def run_queries(
    settings: Settings, plans: dict[str, QueryPlan], queries: list[dict[str, np.ndarray]],
    targets: list[str], variant: Variant, limit_queries: dict[str, int],
    layout: list[VectorSpec] | None = None,
) -> None:  # fmt: skip
    sink = open_sink(settings.sink, layout or text_layout(settings.embed, DIM))
    sink.open_for_reading()
    try:
        for label, plan in plans.items():
            times, ranks = [], []
            for query, target in list(zip(queries, targets, strict=True))[
                : limit_queries.get(label)
            ]:
                began = time.perf_counter()
                hits = sink.query(query, plan, limit=10)
                times.append((time.perf_counter() - began) * 1000)
                ids = [h.id for h in hits]
                ranks.append(ids.index(target) if target in ids else None)
            variant.latency_ms[label], variant.ranks[label] = times, ranks
            print(f"  {variant.name} {label}: p50 {statistics.median(times):.1f} ms", flush=True)
    finally:
        sink.close()


def mrr(ranks: list[int | None]) -> float:
    return statistics.mean(1 / (r + 1) if r is not None else 0.0 for r in ranks)


def recall(ranks: list[int | None]) -> float:
    return statistics.mean(r is not None for r in ranks)


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def measure_size(
    size: int, args: argparse.Namespace, work: Path, builds: dict[int, float]
) -> dict[str, object]:
    rows, items = known_items(size, args.queries)
    corpus = write_corpus(rows, work / f"corpus-{size}", rows_per_file=5000)
    muvera_settings = settings_for(work, corpus, f"muvera-{size}")
    ensure_ray(muvera_settings)
    embedder = load_embedder(muvera_settings.embed)
    encoder = muvera_for(muvera_settings.embed, embedder.dim)
    tokens = [embedder.embed_query(text) for _, text in items]
    queries = [{"text": t, "text_muvera": encoder.encode_query(t)} for t in tokens]
    targets = [str(colray_point_id(rows[i]["doc_id"])) for i, _ in items]
    plans = {"exact": QueryPlan("text")}
    plans |= {f"prefetch {k}": QueryPlan("text", ("text_muvera",), prefetch_limit=k)
              for k in args.prefetch}  # fmt: skip
    limits = {"exact": args.exact_latency_queries}
    result: dict[str, object] = {"size": size, "queries": len(items)}

    print(f"size {size}: MUVERA layout", flush=True)
    muvera = Variant("muvera float32")
    ingest(muvera_settings, muvera)
    run_queries(muvera_settings, plans, queries, targets, muvera, limits)
    exact, mean_tokens = exact_ranks(muvera_settings, tokens, targets)
    result["mean_tokens"] = mean_tokens
    variants = [muvera]

    if size in args.float16_sizes:
        half = Variant("muvera float16")
        half_settings = settings_for(work, corpus, f"f16-{size}", datatype="float16")
        half.build_s = copy_store(muvera_settings, half_settings,
                                  text_layout(half_settings.embed, DIM), size)  # fmt: skip
        half.bytes_per_point = store_bytes(Path(half_settings.sink.path or "")) / size
        run_queries(half_settings, plans, queries, targets, half, limits)
        variants.append(half)

    if size in args.cosine_sizes:
        cosine = Variant("muvera cosine")
        cosine_settings = settings_for(work, corpus, f"cosine-{size}")
        layout = [dataclasses.replace(spec, distance="cosine") if not spec.multivector else spec
                  for spec in text_layout(cosine_settings.embed, DIM)]  # fmt: skip
        cosine.build_s = copy_store(muvera_settings, cosine_settings, layout, size)
        cosine.bytes_per_point = store_bytes(Path(cosine_settings.sink.path or "")) / size
        run_queries(cosine_settings, plans, queries, targets, cosine, limits, layout)
        variants.append(cosine)
        shutil.rmtree(cosine_settings.sink.path or "", ignore_errors=True)

    for n in sorted(x for x in args.hnsw_sizes if x <= size and x not in builds):
        old = settings_for(work, corpus, f"old-{size}-{n}", first_stage="none")
        print(f"size {size}: HNSW on the multivector, {n} points", flush=True)
        builds[n] = copy_store(muvera_settings, old, text_layout(old.embed, DIM), n)
        if n == size:
            old_variant = Variant("multivector HNSW", build_s=builds[n])
            old_variant.bytes_per_point = store_bytes(Path(old.sink.path or "")) / size
            run_queries(old, {"hnsw": QueryPlan("text")}, queries, targets, old_variant, {})
            variants.append(old_variant)
        shutil.rmtree(old.sink.path or "", ignore_errors=True)
    result["multivector_hnsw_build_s"] = dict(builds)
    if builds and size not in builds:
        result["multivector_hnsw_build_s_extrapolated"] = extrapolate(builds, size)

    if size in args.pool_sizes:
        pooled = Variant("muvera pool_factor 2")
        pooled_settings = settings_for(work, corpus, f"pool-{size}", pool_factor=2)
        ingest(pooled_settings, pooled)
        run_queries(pooled_settings, plans, queries, targets, pooled, limits)
        variants.append(pooled)
    result["exact_ranks"] = exact
    result["variants"] = [v.__dict__ for v in variants]
    if not args.work:
        shutil.rmtree(muvera_settings.sink.path or "", ignore_errors=True)
    return result


def colray_point_id(doc_id: str) -> str:
    from colray.rows import point_id

    return point_id("first-stage-bench", doc_id)


def extrapolate(builds: dict[int, float], size: int) -> float:
    """A power law through the measured build times (log-log least squares), at `size`."""
    xs, ys = np.log(list(builds)), np.log([max(b, 1e-3) for b in builds.values()])
    slope, intercept = np.polyfit(xs, ys, 1) if len(builds) > 1 else (1.0, ys[0] - xs[0])
    return float(np.exp(intercept + slope * np.log(size)))


def print_tables(results: list[dict[str, object]]) -> list[str]:
    ratios = []
    for result in results:
        size, exact = result["size"], result["exact_ranks"]
        print(f"\n{size:,} documents, {result['queries']} known-item queries "
              f"(exact MaxSim MRR@10 {mrr(exact):.3f}, R@10 {recall(exact):.3f})")  # fmt: skip
        print("| variant | plan | p50 ms | p95 ms | MRR@10 | vs exact | R@10 | vs exact |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for v in result["variants"]:  # type: ignore[attr-defined]
            for label, times in v["latency_ms"].items():
                # The full scan is timed on a subset; its ranking is the exact one above.
                ranks = exact if label == "exact" else v["ranks"][label]
                m, r = mrr(ranks), recall(ranks)
                print(f"| {v['name']} | {label} | {statistics.median(times):.1f} | "
                      f"{p(times, 0.95):.1f} | {m:.3f} | {m / mrr(exact):.3f} | {r:.3f} | "
                      f"{r / recall(exact):.3f} |")  # fmt: skip
                if v["name"] == "muvera float32" and label == f"prefetch {DEFAULT_PREFETCH}":
                    ratios.append(f"mrr_default_prefetch/exact@{size}={m / mrr(exact):.3f}")
                    ratios.append(f"r10_default_prefetch/exact@{size}={r / recall(exact):.3f}")
        print("\n| variant | index build s | vector bytes per point | disk per point | "
              "first-stage share of embed |")  # fmt: skip
        print("| --- | ---: | ---: | ---: | ---: |")
        tokens = float(result["mean_tokens"])  # type: ignore[arg-type]
        for v in result["variants"]:  # type: ignore[attr-defined]
            share = f"{v['first_stage_share']:.3f}" if v["first_stage_share"] is not None else "-"
            build = f"{v['build_s']:.1f}" if v["build_s"] is not None else "-"
            width = 2 if "float16" in v["name"] else 4
            floats = tokens * DIM * (0.5 if "pool" in v["name"] else 1)
            floats += 0 if v["name"] == "multivector HNSW" else FDE_DIMS
            print(f"| {v['name']} | {build} | {floats * width:,.0f} | "
                  f"{v['bytes_per_point']:,.0f} | {share} |")  # fmt: skip
        print(f"multivector HNSW builds (points: s): {result['multivector_hnsw_build_s']}")
        if "multivector_hnsw_build_s_extrapolated" in result:
            print(
                f"  extrapolated to {size:,}: {result['multivector_hnsw_build_s_extrapolated']:.0f} s"
            )
    return ratios


def plot(results: list[dict[str, object]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (quality, latency) = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        exact = result["exact_ranks"]
        for v in result["variants"]:  # type: ignore[attr-defined]
            if not v["name"].startswith("muvera"):
                continue
            limits = sorted(int(k.split()[1]) for k in v["latency_ms"] if k.startswith("prefetch"))
            label = f"{v['name']}, {result['size']:,} docs"
            quality.plot(limits, [mrr(v["ranks"][f"prefetch {k}"]) / mrr(exact) for k in limits],
                         marker="o", label=label)  # fmt: skip
            latency.plot(limits, [statistics.median(v["latency_ms"][f"prefetch {k}"]) for k in limits],
                         marker="o", label=label)  # fmt: skip
            latency.axhline(statistics.median(v["latency_ms"]["exact"]), linestyle=":",
                            color=latency.lines[-1].get_color())  # fmt: skip
    quality.set(xscale="log", xlabel="prefetch_limit", ylabel="MRR@10 / exact MaxSim",
                title="Quality of MUVERA + rerank")  # fmt: skip
    latency.set(xscale="log", yscale="log", xlabel="prefetch_limit", ylabel="p50 ms per query",
                title="Latency (dotted: exact MaxSim, full scan)")  # fmt: skip
    labelled: list[int] = []
    for k in limits:
        if not labelled or k >= 1.9 * labelled[-1]:
            labelled.append(k)
    for axis in (quality, latency):  # on a log axis 800, 1000 and 1200 would print over each other
        axis.set_xticks(limits, [str(k) if k in labelled else "" for k in limits])
        axis.minorticks_off()
    quality.axhline(0.95, color="grey", linewidth=0.8)
    quality.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


def merged(
    earlier: list[dict[str, object]], new: list[dict[str, object]]
) -> list[dict[str, object]]:
    """`earlier` results with this run's sizes updated: a variant measured again replaces its
    earlier measurement, the others are kept (same corpus and model, so the same exact ranks)."""
    by_size = {r["size"]: r for r in earlier}
    for result in new:
        old = by_size.get(result["size"])
        if old is not None:
            names = {v["name"] for v in result["variants"]}  # type: ignore[attr-defined]
            kept = [v for v in old["variants"] if v["name"] not in names]  # type: ignore[attr-defined]
            builds = {**old.get("multivector_hnsw_build_s", {}),  # type: ignore[dict-item]
                      **result.get("multivector_hnsw_build_s", {})}  # type: ignore[dict-item]  # fmt: skip
            result = {**old, **result, "variants": result["variants"] + kept,  # type: ignore[operator]
                      "multivector_hnsw_build_s": builds}  # fmt: skip
        by_size[result["size"]] = result
    return [by_size[size] for size in sorted(by_size)]  # type: ignore[type-var]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=ints, default=[10000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--prefetch", type=ints, default=[25, 50, 100, 200, 400, 800])
    parser.add_argument("--hnsw-sizes", type=ints, default=[2000, 5000, 10000])
    parser.add_argument("--float16-sizes", type=ints, default=[10000])
    parser.add_argument("--pool-sizes", type=ints, default=[10000])
    parser.add_argument("--cosine-sizes", type=ints, default=[10000])
    parser.add_argument("--merge", help="an earlier run's results to merge this run's into")
    parser.add_argument(
        "--exact-latency-queries",
        type=int,
        default=100,
        help="queries timed for exact MaxSim (a full scan: slow at 100k)",
    )
    parser.add_argument("--out", default=str(DOCS / "first_stage.json"))
    parser.add_argument(
        "--work",
        help="a folder for the corpora and stores, kept after the run (default: a temporary "
        "one, removed); a run interrupted after its loads re-runs here without loading again",
    )
    parser.add_argument(
        "--replot", action="store_true", help="print the tables and draw the plot of --out only"
    )
    args = parser.parse_args()
    if args.replot:
        results = json.loads(Path(args.out).read_text())
        print(" ".join(print_tables(results)))
        plot(results, DOCS / "first_stage.png")
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="colray-first-stage-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        builds: dict[int, float] = {}  # HNSW builds on the multivector, each size once
        results = [measure_size(size, args, work, builds) for size in args.sizes]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if args.merge:
        results = merged(json.loads(Path(args.merge).read_text()), results)
    Path(args.out).write_text(json.dumps(results))
    ratios = print_tables(results)
    plot(results, DOCS / "first_stage.png")
    print(" ".join(ratios))


if __name__ == "__main__":
    main()
