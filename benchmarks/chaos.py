"""Chaos: the same ingest job with 0% to 30% of the sink's calls failing, on two paths.

Local mode: the job's real QdrantClient (written by the driver) is made flaky by the tests'
fault injector (`tests/faults.py`): real exception types (timeouts, 429 with Retry-After,
500, 502, 503), half of them raised after the call was applied.
Server: the job writes over HTTP through `sink.writers` actors into the tests' Qdrant stand-in
(`tests/qdrant_standin.py`), which fails that share of its upserts with 500/502/503, 429 and
dropped connections, half of them after applying the write. The stand-in applies updates
in order, each taking --apply-ms, as a server's update worker behind its write-ahead log;
the server runs go once with `sink.upsert_wait: true` (each upsert answered once applied)
and once with false (answered once queued, one barrier before indexing is switched on).
Each run is its own Ray job in a subprocess; the tables show rows in and out, duplicates, the
retries and the time overhead against the same path with no faults (the stand-in's own speed
is not a server's: compare within a path).

    uv run --group bench python benchmarks/chaos.py [--rows 1000] [--rates 0,0.1,0.2,0.3]
        [--writers 1,3] [--apply-ms 20] [--no-local]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from colray.demo import stdlib_docstrings, write_corpus

TESTS = Path(__file__).resolve().parent.parent / "tests"
DOCS = Path(__file__).resolve().parent.parent / "docs"
sys.path.insert(0, str(TESTS))
FAST_RETRIES = {"retry_attempts": 50, "retry_timeout_s": 600, "retry_wait_initial_s": 0.05,
                "retry_wait_max_s": 1.0}  # fmt: skip
JOB = """
import os, sys
import ray
from qdrant_client import QdrantClient
import colray
from faults import FlakyClient

config, out, store = sys.argv[1:4]
ray.init(include_dashboard=False)
# A local-mode store is written by the driver, which holds its directory's lock.
client = FlakyClient(QdrantClient(path=store), rate=float(os.environ["COLRAY_TEST_FAULT_RATE"]))
open(out, "w").write(colray.ingest(config, client=client).to_json())
"""


def run_with_faults(work: Path, corpus: Path, rate: float) -> dict:
    run_dir = work / f"rate-{rate}"
    run_dir.mkdir()
    config = run_dir / "job.yaml"
    config.write_text(
        json.dumps(
            {
                "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id"},
                "embed": {"model": "minilm-token"},
                # Short backoffs: the overhead measured is the retries', not a long sleep.
                "sink": {"kind": "qdrant", "path": str(run_dir / "store"), "batch_size": 16,
                         **FAST_RETRIES},
                # On Ray, as every run of this table was (a 600-row job would run in-process).
                "run": {"dir": str(run_dir / "runs"), "progress": False, "executor": "ray"},
            }
        )
    )  # fmt: skip
    faults = run_dir / "faults.log"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "COLRAY_TEST_FAULT_RATE": str(rate),
           "COLRAY_TEST_FAULT_LOG": str(faults)}  # fmt: skip
    out = run_dir / "report.json"
    store_path = str(run_dir / "store")
    subprocess.run(
        [sys.executable, "-c", JOB, str(config), str(out), store_path], env=env, check=True
    )
    report = json.loads(out.read_text())
    from qdrant_client import QdrantClient

    store = QdrantClient(path=str(run_dir / "store"))
    records, _ = store.scroll("colray", limit=10**6, with_payload=True)
    store.close()
    keys = [r.payload["_colray"]["key"] for r in records]
    lines = faults.read_text().split() if faults.exists() else []
    return {
        "path": "local mode",
        "rate": rate,
        "faults": sum(1 for word in lines if word in {"before", "after"}),
        "retries": report["write_retries"],
        "rows_in": report["rows_read"],
        "written": report["points_written"],
        "in_store": len(keys),
        "duplicates": len(keys) - len(set(keys)),
        "seconds": report["duration_s"],
    }


def run_against_server(
    work: Path, corpus: Path, rate: float, writers: int, upsert_wait: bool, apply_s: float
) -> dict:
    """The job through `writers` writer actors into the stand-in, failing `rate` of upserts."""
    from qdrant_client import QdrantClient

    from qdrant_standin import Faults, QdrantStandIn

    run_dir = work / f"server-{writers}-{rate}-{upsert_wait}"
    run_dir.mkdir()
    faults = Faults(rate=rate, seed=int(rate * 100) + writers, paths=("/points",))
    with QdrantStandIn(faults=faults, apply_s=apply_s) as server:
        config = run_dir / "job.yaml"
        config.write_text(json.dumps({
            "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id"},
            "embed": {"model": "minilm-token"},
            "sink": {"kind": "qdrant", "url": server.url, "collection": "docs",
                     "writers": writers, "batch_size": 16, "upsert_wait": upsert_wait,
                     **FAST_RETRIES},
            "run": {"dir": str(run_dir / "runs"), "progress": False},
        }))  # fmt: skip
        out = run_dir / "report.json"
        command = [
            sys.executable,
            "-m",
            "colray.cli",
            "ingest",
            "-c",
            str(config),
            "--report",
            str(out),
        ]
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        report = json.loads(out.read_text())
        injected = sum(faults.injected.values())
        faults.rate = 0.0  # the benchmark's own check reads the store without faults
        client = QdrantClient(url=server.url, timeout=60)
        records, _ = client.scroll("docs", limit=10**6, with_payload=True)
        client.close()
        keys = [r.payload["_colray"]["key"] for r in records]
        largest = server.largest_body()
    return {
        "path": f"server, {writers} writer{'s' * (writers > 1)}"
        + ("" if upsert_wait else ", upsert_wait=false"),
        "rate": rate,
        "faults": injected,
        "retries": report["write_retries"],
        "largest_mb": largest / 2**20,
        "rows_in": report["rows_read"],
        "written": report["points_written"],
        "in_store": len(keys),
        "duplicates": len(keys) - len(set(keys)),
        "seconds": report["duration_s"],
    }


def table(results: list[dict]) -> None:
    print("| path | fault rate | faults | retries | rows in | written | in store | duplicates "
          "| seconds | overhead |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = {r["path"]: r["seconds"] for r in results if r["rate"] == 0}
    for r in results:
        print(f"| {r['path']} | {r['rate']:.0%} | {r['faults']} | {r['retries']} | {r['rows_in']} "
              f"| {r['written']} | {r['in_store']} | {r['duplicates']} | {r['seconds']:.1f} | "
              f"{r['seconds'] / base[r['path']]:.2f}x |")  # fmt: skip


def plot(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4))
    for path in dict.fromkeys(r["path"] for r in results):
        runs = [r for r in results if r["path"] == path]
        base = next(r["seconds"] for r in runs if r["rate"] == 0)
        axis.plot([r["rate"] * 100 for r in runs], [r["seconds"] / base for r in runs],
                  marker="o", label=path)  # fmt: skip
    axis.set(xlabel="share of the sink's calls failing (%)", ylabel="time / same path, no faults",
             title="Ingest under faults: nothing lost, nothing duplicated")  # fmt: skip
    axis.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rates", default="0,0.1,0.2,0.3")
    parser.add_argument("--writers", default="1,3", help="server path: writer actors per run")
    parser.add_argument("--no-local", action="store_true", help="only the server path")
    parser.add_argument("--apply-ms", type=float, default=20.0,
                        help="server path: the stand-in's time to apply one update")  # fmt: skip
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    rows = list(stdlib_docstrings(public_only=False))[: args.rows]
    work = Path(tempfile.mkdtemp(prefix="colray-chaos-"))
    corpus = write_corpus(rows, work / "corpus", rows_per_file=250)
    results = [] if args.no_local else [run_with_faults(work, corpus, rate) for rate in rates]
    for writers in (int(w) for w in args.writers.split(",") if w):
        for upsert_wait in (True, False):
            results += [
                run_against_server(work, corpus, rate, writers, upsert_wait, args.apply_ms / 1000)
                for rate in rates
            ]
    table(results)
    plot(results, DOCS / "chaos.png")
    worst = [r for r in results if r["rate"] == max(rates)]
    lost = sum(r["rows_in"] - r["in_store"] for r in worst)
    base = {r["path"]: r["seconds"] for r in results if r["rate"] == 0}
    overheads = " ".join(
        f"overhead[{r['path']}]={r['seconds'] / base[r['path']]:.2f}x" for r in worst
    )
    # upsert_wait=false against true, same writers, summed over the fault rates.
    seconds: dict[str, float] = {}
    for r in results:
        seconds[r["path"]] = seconds.get(r["path"], 0.0) + r["seconds"]
    no_wait = " ".join(
        f"no_wait/wait[{path.split(', ')[1]}]={total / seconds[path.rsplit(', ', 1)[0]]:.2f}x"
        for path, total in seconds.items()
        if path.endswith("upsert_wait=false")
    )
    print(f"fault_rate={max(rates):.2f} lost={lost} "
          f"duplicates={sum(r['duplicates'] for r in results)} {overheads} {no_wait}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
