"""Small jobs: where a 300-row job's seconds go, cold, and the three targets of a first hour.

Each run is a fresh `colray` process, as a user starts it: with no run.ray_address it starts
its own local Ray node (cold) and takes it down when it exits. Printed: the run's phases from its report
(checking the job, Ray's start, the embedders' start up to the first written block, the
rest of the load, indexing), then the targets' figures on the last line:

- a 300-row job end to end, cold (target 15 s),
- `colray demo "a query"` answering from an already-built store (target 3 s),
- a no-op `--incremental` run (nothing changed; target 10 s).

    uv run python benchmarks/startup.py
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from colray.demo import stdlib_docstrings, write_corpus


def colray(*args: str, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "colray.cli", *args], cwd=cwd,
                         capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise SystemExit(f"colray {' '.join(args)} failed:\n{run.stderr[-3000:]}")
    return seconds, run


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="colray-startup-"))
    corpus = write_corpus(list(stdlib_docstrings())[:300], work / "docs.parquet")
    job = work / "job.yaml"
    job.write_text(json.dumps({
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                   "payload_columns": ["title"]},
        "sink": {"kind": "edge", "path": str(work / "store"), "indexing_threshold_kb": 200000},
        "run": {"dir": str(work / "runs"), "progress": False},
    }))  # fmt: skip
    import_s, _ = colray("models", cwd=work)  # Python start and colray's imports, no Ray
    cold_s, _run = colray("ingest", "-c", str(job), "--report", str(work / "cold.json"), cwd=work)
    report = json.loads((work / "cold.json").read_text())
    incremental_s, _ = colray("ingest", "-c", str(job), "--incremental", cwd=work)
    colray("demo", "--dir", str(work / "demo"), "warm up", cwd=work)  # builds the store
    demo_s, _ = colray("demo", "--dir", str(work / "demo"), "send email", cwd=work)

    stages = report["stages_s"]
    first = report["first_block_s"] or 0.0
    print("| phase of a cold 300-row job | seconds |")
    print("| --- | ---: |")
    phases = [
        ("Python start, colray's imports (a `colray models` run)", import_s),
        ("checking the job: source footers, loading the model in the driver", stages.get("prepare", 0)),
        ("Ray's local node start, embedder actors' start and model load, to the first block",
         first - stages.get("prepare", 0)),
        ("embedding and writing the rest", report["duration_s"] - first - stages.get("finalize", 0)),
        ("indexing (Edge optimize)", stages.get("finalize", 0)),
        ("whole command, wall clock", cold_s),
    ]  # fmt: skip
    for name, seconds in phases:
        print(f"| {name} | {seconds:.1f} |")
    print(f"\nembed stage {stages.get('embed', 0):.1f}s, write {stages.get('write', 0):.1f}s "
          f"(summed over workers)")  # fmt: skip
    print(f"cold_300_rows_s={cold_s:.1f} demo_query_s={demo_s:.1f} "
          f"noop_incremental_s={incremental_s:.1f} (targets 15 / 3 / 10)")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
