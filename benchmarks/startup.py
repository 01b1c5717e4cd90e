"""Small jobs: where a 300-row job's seconds go, cold, and the three targets of a first hour.

Each run is a fresh `colray` process, as a user starts it, once with run.executor=local (what
`auto` picks for this job: every stage in the process) and once with run.executor=ray (its own
local Ray node, cold, taken down when it exits). Printed: the run's phases from its report
(checking the job, the start up to the first written block, the rest of the load, indexing),
side by side, then the targets' figures on the last line:

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
    import_s, _ = colray("models", cwd=work)  # Python start and colray's imports, no Ray
    runs = {executor: small_job(work, corpus, executor) for executor in ("local", "ray")}
    colray("demo", "--dir", str(work / "demo"), "warm up", cwd=work)  # builds the store
    demo_s, _ = colray("demo", "--dir", str(work / "demo"), "send email", cwd=work)

    print("| phase of a cold 300-row job, seconds | in-process (auto) | on a local Ray |")
    print("| --- | ---: | ---: |")
    print(
        f"| Python start, colray's imports (a `colray models` run) | {import_s:.1f} | {import_s:.1f} |"
    )
    for name, pick in PHASES:
        print(f"| {name} | " + " | ".join(f"{pick(*runs[e][:2]):.1f}" for e in runs) + " |")
    print("| no-op `--incremental` run, wall clock | "
          + " | ".join(f"{runs[e][2]:.1f}" for e in runs) + " |")  # fmt: skip
    print()
    print("| a cold local Ray, step by step (a fresh process) | seconds from its start |")
    print("| --- | ---: |")
    for name, seconds in ray_alone(work).items():
        print(f"| {name} | {seconds:.1f} |")
    local, ray = runs["local"], runs["ray"]
    print(f"\ncold_300_rows_s={local[0]:.1f} demo_query_s={demo_s:.1f} "
          f"noop_incremental_s={local[2]:.1f} (targets 15 / 3 / 10); on Ray: "
          f"cold_300_rows_s={ray[0]:.1f} noop_incremental_s={ray[2]:.1f}")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


RAY_ALONE = """
import json, sys, time
marks = {}
start = time.perf_counter()
import ray
marks["import ray"] = time.perf_counter() - start
ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False)
marks["ray.init(): a local node (GCS, raylet, agents)"] = time.perf_counter() - start
ray.get(ray.remote(lambda: 1).remote())
marks["a first task (a worker process starts)"] = time.perf_counter() - start
import ray.data
marks["import ray.data (pandas under it)"] = time.perf_counter() - start
ray.data.DataContext.get_current().enable_progress_bars = False
ray.data.range(8).map_batches(lambda b: b).count()
marks["a first Ray Data job (its stats and autoscaling actors)"] = time.perf_counter() - start


class Model:
    def __init__(self, cache):
        began = time.perf_counter()
        from colray.config import EmbedConfig
        from colray.embed import load_embedder
        imported = time.perf_counter()
        load_embedder(EmbedConfig(cache_dir=cache))
        self.seconds = (imported - began, time.perf_counter() - imported)

    def __call__(self, batch):
        return {"imports": [self.seconds[0]], "load": [self.seconds[1]]}


[row] = ray.data.range(1).map_batches(
    Model, fn_constructor_args=(sys.argv[1],), compute=ray.data.ActorPoolStrategy(size=1)
).take_all()
marks["an embedding actor: start, imports and model load"] = time.perf_counter() - start
marks["  of which colray's and ONNX Runtime's imports in the actor"] = row["imports"]
marks["  of which loading the model in the actor"] = row["load"]
print(json.dumps(marks))
"""


def ray_alone(work: Path) -> dict[str, float]:
    """Ray's own start, step by step, then an embedding actor's: cumulative seconds from the
    process start, except the two parts of the actor's own work."""
    cache = str(Path.home() / ".cache" / "colray")
    run = subprocess.run([sys.executable, "-c", RAY_ALONE, cache], cwd=work,
                         capture_output=True, text=True)  # fmt: skip
    if run.returncode != 0:
        raise SystemExit(f"the Ray start-up probe failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def small_job(work: Path, corpus: Path, executor: str) -> tuple[float, dict, float]:
    """A cold 300-row job, then the same job again with --incremental (nothing changed):
    (cold seconds, its report, no-op seconds)."""
    job = work / f"{executor}.yaml"
    job.write_text(json.dumps({
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                   "payload_columns": ["title"]},
        "sink": {"kind": "edge", "path": str(work / f"store-{executor}"),
                 "indexing_threshold_kb": 200000},
        "run": {"dir": str(work / f"runs-{executor}"), "progress": False, "executor": executor},
    }))  # fmt: skip
    report_path = work / f"{executor}.json"
    cold_s, _ = colray("ingest", "-c", str(job), "--report", str(report_path), cwd=work)
    report = json.loads(report_path.read_text())
    assert report["executor"] == executor and report["points_in_store"] == 300, report
    noop_s, _ = colray("ingest", "-c", str(job), "--incremental", cwd=work)
    return cold_s, report, noop_s


def _stage(name: str):
    return lambda cold_s, report: report["stages_s"].get(name, 0.0)


PHASES = [
    ("checking the job: source footers, loading the model in the driver", _stage("prepare")),
    ("from there to the first written block (Ray: its node, the actors, their model load)",
     lambda cold_s, r: (r["first_block_s"] or 0.0) - r["stages_s"].get("prepare", 0.0)),
    ("embedding and writing the rest",
     lambda cold_s, r: r["duration_s"] - (r["first_block_s"] or 0.0) - r["stages_s"].get("finalize", 0.0)),
    ("of the run: the embed stage (summed over actors)", _stage("embed")),
    ("indexing (Edge optimize)", _stage("finalize")),
    ("whole command, wall clock", lambda cold_s, report: cold_s),
]  # fmt: skip


if __name__ == "__main__":
    main()
