"""Chaos: the same ingest job with 0%, 10% and 30% of the sink's calls failing.

The job's real QdrantClient (local mode, written by the driver) is made flaky by the tests'
fault injector (`tests/faults.py`): real exception types (timeouts, 429 with Retry-After,
500, 502, 503), half of them raised after the call was applied. Each run is its own Ray job
in a subprocess; the table shows rows in and out, duplicates and the retries' time overhead.

    uv run python benchmarks/chaos.py [--rows 1000] [--rates 0,0.1,0.3]
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
                         "retry_attempts": 50, "retry_timeout_s": 600,
                         "retry_wait_initial_s": 0.05, "retry_wait_max_s": 1.0},
                "run": {"dir": str(run_dir / "runs"), "progress": False},
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
        "rate": rate,
        "faults": sum(1 for word in lines if word in {"before", "after"}),
        "rows_in": report["rows_read"],
        "written": report["points_written"],
        "in_store": len(keys),
        "duplicates": len(keys) - len(set(keys)),
        "seconds": report["duration_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--rates", default="0,0.1,0.3")
    args = parser.parse_args()
    rows = list(stdlib_docstrings(public_only=False))[: args.rows]
    work = Path(tempfile.mkdtemp(prefix="colray-chaos-"))
    corpus = write_corpus(rows, work / "corpus", rows_per_file=250)
    results = [run_with_faults(work, corpus, float(rate)) for rate in args.rates.split(",")]
    base = results[0]["seconds"]
    print(f"{'fault rate':>10}{'faults':>8}{'rows in':>9}{'written':>9}{'in store':>10}"
          f"{'dupes':>7}{'seconds':>9}{'overhead':>10}")  # fmt: skip
    for r in results:
        print(
            f"{r['rate']:>10.0%}{r['faults']:>8}{r['rows_in']:>9}{r['written']:>9}"
            f"{r['in_store']:>10}{r['duplicates']:>7}{r['seconds']:>9.1f}"
            f"{r['seconds'] / base:>9.2f}x"
        )
    worst = results[-1]
    lost = worst["rows_in"] - worst["in_store"]
    print(
        f"fault_rate={worst['rate']:.2f} rows_in={worst['rows_in']} in_store={worst['in_store']} "
        f"lost={lost} duplicates={worst['duplicates']} "
        f"time_overhead={worst['seconds'] / base:.2f}x"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
