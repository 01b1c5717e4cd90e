"""Text ingest throughput: raw embedder vs the tutorials' sequential loop vs the colray pipeline.

All three run in one process on the same corpus (docstrings of Python's standard library), so
the ratios on the last line are comparable even on a shared, noisy machine.

    uv run python benchmarks/text_ingest.py [--rows 5000] [--model minilm-token]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

import colray
from colray.config import load_settings
from colray.demo import stdlib_docstrings, write_corpus
from colray.embed import load_embedder
from colray.layout import text_layout
from colray.pipeline import ensure_ray
from colray.rows import point_id
from colray.sink import Point, open_sink

# Every variant stays below the indexing threshold: this measures ingest, not HNSW builds.
NO_HNSW_KB = 10**9


def _rollup(pid: int) -> dict[str, int]:
    """A process's memory summary in bytes, from /proc/PID/smaps_rollup (one cheap read)."""
    totals = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            key, _, rest = line.partition(":")
            if rest.endswith("kB\n"):
                totals[key] = int(rest.split()[0]) * 1024
    return totals


class PeakRss:
    """Peak proportional set size (PSS) of this process and its descendants (Ray's workers).

    PSS splits shared pages (Ray's object store, shared libraries) among the processes that
    map them, so the sum over processes does not count them twice as RSS would. `peak` is all
    of it; `peak_working` leaves out file-backed pages (Pss_File): the mapped files of a store
    (Qdrant keeps its segments in mmapped files, so a written store shows up here at its size
    on disk), of the model and of shared libraries, which the kernel can drop and re-read. It
    is anonymous memory plus Ray's shared-memory object store: what the job itself holds.
    """

    def __init__(self) -> None:
        self.peak = 0
        self.peak_working = 0
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (process title, CPU seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        me = psutil.Process()
        total = working = 0
        for proc in [me, *me.children(recursive=True)]:
            # A worker may exit between the listing and the read.
            with contextlib.suppress(psutil.Error, OSError):
                memory = _rollup(proc.pid)
                total += memory.get("Pss", 0)
                working += memory.get("Pss_Anon", 0) + memory.get("Pss_Shmem", 0)
                times = proc.cpu_times()
                title = "driver" if proc.pid == me.pid else " ".join(proc.cmdline()[:1])[:40]
                self.cpu[proc.pid] = (title, times.user + times.system)
        return total, working

    def cpu_by_process(self) -> dict[str, float]:
        """CPU seconds per process title during the variant."""
        totals: dict[str, float] = {}
        for pid, (title, seconds) in self.cpu.items():
            seconds -= self.baseline.get(pid, 0.0)
            key = title.split(" ")[0].split("/")[-1]
            totals[key] = totals.get(key, 0.0) + seconds
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def _run(self) -> None:
        while not self._stop.is_set():
            total, working = self._sample()
            self.peak = max(self.peak, total)
            self.peak_working = max(self.peak_working, working)
            # Sampling every process faster than once a second measurably slowed the
            # variants it was measuring.
            time.sleep(1.0)

    def __enter__(self) -> PeakRss:
        # Processes alive before the variant (the driver, Ray's daemons) count only from here.
        self._sample()
        self.baseline = {pid: seconds for pid, (_, seconds) in self.cpu.items()}
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def spilled_bytes() -> int:
    """Bytes Ray's object store has spilled to disk since the cluster started (all nodes)."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    return int(get_memory_info_reply(get_state_from_address()).store_stats.spilled_bytes_total)


def timed(fn: Callable[[], object]) -> tuple[float, PeakRss]:
    with PeakRss() as rss:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    return seconds, rss


def embed_then_upsert(settings, embedder, rows, group: int, store: Path) -> float:
    """The Qdrant tutorials' loop: embed a group, upsert it, repeat; then re-enable indexing.

    Returns the seconds spent inside the embedder, so the loop with colray's 256-row groups
    also gives the raw embedder's time on exactly the same calls.
    """
    sink = open_sink(settings.sink.model_copy(update={"path": str(store)}),
                     text_layout(settings.embed, embedder.dim))  # fmt: skip
    sink.prepare()
    embedding = 0.0
    for start in range(0, len(rows), group):
        batch = rows[start : start + group]
        began = time.perf_counter()
        vectors = embedder.embed_documents([r["text"] for r in batch])
        embedding += time.perf_counter() - began
        sink.write([Point(point_id("bench", r["doc_id"]), {"text": v}, {"title": r["title"]})
                    for r, v in zip(batch, vectors, strict=True)])  # fmt: skip
    sink.finalize()
    sink.close()
    return embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--model", default="minilm-token")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows-per-call", type=int, default=256)
    parser.add_argument("--actors", type=int, default=1, help="pipeline embedder actors")
    parser.add_argument("--threads", type=int, default=None, help="threads per actor")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0)
    parser.add_argument(
        "--only", default="raw,sequential,sorted,pipeline", help="comma-separated variants"
    )
    args = parser.parse_args()

    rows = list(stdlib_docstrings(public_only=False))[: args.rows]
    if len(rows) < args.rows:
        raise SystemExit(f"only {len(rows)} docstrings available")
    work = Path(tempfile.mkdtemp(prefix="colray-bench-"))
    corpus = write_corpus(rows, work / "corpus", rows_per_file=1000)
    texts = [r["text"] for r in rows]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.actors)
    base = {
        "source": {
            "path": str(corpus),
            "text_column": "text",
            "id_column": "doc_id",
            "payload_columns": ["title"],
        },
        "embed": {
            "model": args.model,
            "batch_size": args.batch_size,
            "rows_per_call": args.rows_per_call,
            "threads_per_actor": threads,
            "num_actors": args.actors,
            "cpus_per_actor": args.cpus_per_actor,
        },
        "sink": {
            "kind": "edge",
            "path": str(work / "pipeline-store"),
            "indexing_threshold_kb": NO_HNSW_KB,
        },
        "run": {"dir": str(work / "runs"), "progress": False},
    }
    settings = load_settings(None, base=base)
    # The baselines get every core, whatever the pipeline's actors are set to.
    embedder = load_embedder(
        settings.embed.model_copy(update={"threads_per_actor": os.cpu_count()})
    )
    embedder.embed_documents(texts[:64])  # warm-up: first-call allocations

    def raw() -> None:
        for start in range(0, len(texts), args.rows_per_call):
            embedder.embed_documents(texts[start : start + args.rows_per_call])

    def sequential() -> None:
        embed_then_upsert(settings, embedder, rows, args.batch_size, work / "sequential-store")

    def sequential_sorted() -> None:
        """Groups of rows_per_call, length-sorted inside: isolates what overlap alone buys."""
        embed_then_upsert(settings, embedder, rows, args.rows_per_call, work / "sorted-store")

    # Cluster start-up is paid once per cluster, not per job: ray.init and Ray Data's
    # detached service actors (stats, autoscaling coordinator), which a tiny dataset starts.
    ensure_ray(settings)
    import ray  # after colray, whose import sets Ray's environment defaults

    ray.data.range(10).map_batches(lambda batch: batch).take_all()
    report_holder: dict = {}

    def pipeline() -> None:
        report_holder["report"] = colray.ingest(settings)

    results = {}
    variants = {
        "raw": ("raw embedder", raw),
        "sequential": ("sequential loop", sequential),
        "sorted": ("sorted seq. loop", sequential_sorted),
        "pipeline": ("colray pipeline", pipeline),
    }
    for key in args.only.split(","):
        name, fn = variants[key]
        seconds, sampler = timed(fn)
        results[name] = (len(rows) / seconds, seconds, sampler.peak)
        if key == "pipeline":
            top = list(sampler.cpu_by_process().items())[:6]
            cpu_line = ", ".join(f"{title} {sec:.0f}" for title, sec in top)
    print(
        f"corpus: {len(rows)} stdlib docstrings, model {args.model}, {threads} threads, {os.cpu_count()} cores"
    )
    print(f"{'variant':<18}{'docs/s':>10}{'seconds':>10}{'peak PSS MB':>14}")
    for name, (rate, seconds, peak) in results.items():
        print(f"{name:<18}{rate:>10.1f}{seconds:>10.1f}{peak / 2**20:>14.0f}")
    if "report" in report_holder:
        report = report_holder["report"]
        assert report.points_written == len(rows), report
        print(f"pipeline stages (s): {report.stages_s} first block after {report.first_block_s}s")
        print(f"pipeline CPU seconds by process: {cpu_line}")
    rate = {name: r[0] for name, r in results.items()}
    ratios = []
    if "colray pipeline" in rate:
        for other, label in (
            ("raw embedder", "raw"),
            ("sequential loop", "sequential"),
            ("sorted seq. loop", "sorted_sequential"),
        ):
            if other in rate:
                ratios.append(f"pipeline/{label}={rate['colray pipeline'] / rate[other]:.2f}")
        ratios.append(f"peak_pss_mb={results['colray pipeline'][2] / 2**20:.0f}")
    print(" ".join([*ratios, f"rows={len(rows)}"]))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
