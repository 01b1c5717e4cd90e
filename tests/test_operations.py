"""Operating colray: Prometheus metrics of a running job, and past runs at a glance."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from colray.cli import main
from colray.config import load_settings
from colray.report import RunReport
from faults import interruptible
from qdrant_standin import Faults, QdrantStandIn, free_port

# --- past runs -------------------------------------------------------------------------------


def past_run(run_dir: Path, run_id: str, outcome: str | None, **counts) -> Path:
    folder = run_dir / run_id
    folder.mkdir(parents=True)
    if outcome is not None:
        report = RunReport(run_id=run_id, started_at=f"2026-12-0{run_id[7]}T10:00:00+00:00",
                           outcome=outcome, report_path=str(folder / "report.json"),
                           dead_letter_path=str(folder / "dead_letters.parquet"), **counts)  # fmt: skip
        report.save()
    return folder


@pytest.fixture
def run_dir(tmp_path) -> Path:
    root = tmp_path / "runs"
    past_run(root, "20261201T100000Z-aaaaaa", "succeeded", rows_read=10, points_written=10,
             duration_s=3.5, exit_code=0)  # fmt: skip
    failed = past_run(root, "20261202T100000Z-bbbbbb", "failed", rows_read=4, points_written=2,
                      dead_lettered=2, exit_code=1, error="SinkUnavailable: 5 batches in a row",
                      dead_letter_reasons={"write: RetriesExhausted": 2})  # fmt: skip
    pq.write_table(pa.table({"point_id": ["a", "b"]}), failed / "dead_letters.parquet")
    past_run(root, "20261203T100000Z-cccccc", "interrupted", rows_read=1, exit_code=130)
    past_run(root, "20261204T100000Z-dddddd", None)  # killed before it wrote its report
    (root / "resume" / "0123456789abcdef").mkdir(parents=True)
    (root / "resume" / "0123456789abcdef" / "done.log").write_text("x" * 36 + "\n")
    return root


def test_runs_lists_newest_first(run_dir, capsys):
    assert main(["runs", "--dir", str(run_dir), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["id"][-6:] for r in rows] == ["dddddd", "cccccc", "bbbbbb", "aaaaaa"]
    assert [r["outcome"] for r in rows] == ["no report (killed?)", "interrupted", "failed",
                                            "succeeded"]  # fmt: skip
    assert rows[3]["written"] == 10 and rows[3]["duration_s"] == 3.5
    assert rows[3]["report"] == str(run_dir / "20261201T100000Z-aaaaaa" / "report.json")
    assert main(["runs", "--dir", str(run_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("id") and "20261204T100000Z-dddddd" in table[1]


def test_runs_show_reads_a_report_with_its_top_reasons(run_dir, capsys):
    assert main(["runs", "show", "20261202T10", "--dir", str(run_dir)]) == 0  # a prefix will do
    text = capsys.readouterr().out
    assert text.startswith("20261202T100000Z-bbbbbb: failed (exit 1)")
    assert "error: SinkUnavailable: 5 batches in a row" in text
    assert "2  write: RetriesExhausted" in text
    assert f"dead letters: {run_dir / '20261202T100000Z-bbbbbb' / 'dead_letters.parquet'}" in text
    assert main(["runs", "show", "nope", "--dir", str(run_dir)]) == 2


def test_runs_prune_keeps_the_newest_and_every_resume_state(run_dir, capsys):
    assert main(["runs", "prune", "--keep", "2", "--dir", str(run_dir)]) == 0
    assert "removed 2 run(s)" in capsys.readouterr().out
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == ["20261203T100000Z-cccccc", "20261204T100000Z-dddddd", "resume"]
    assert (run_dir / "resume" / "0123456789abcdef" / "done.log").is_file()


def test_runs_reads_a_jobs_run_dir(tmp_path, run_dir, capsys):
    job = tmp_path / "job.yaml"
    job.write_text(f"source: {{path: x, text_column: t}}\nrun: {{dir: {run_dir}}}\n")
    assert load_settings(job).run.dir == str(run_dir)
    assert main(["runs", "-c", str(job), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4


@pytest.mark.slow
def test_runs_over_real_runs_of_every_outcome(tmp_path, module_docs, onnx_cache, capsys,
                                              monkeypatch):  # fmt: skip
    """The folders real runs leave (in-process, so each takes seconds): succeeded, too many
    dead letters, failed (the server refused every write), interrupted (Ctrl-C)."""
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")
    runs = tmp_path / "runs"
    good = [dict(r) for r in module_docs[:10]]
    blank = [{"doc_id": f"blank-{i}", "title": "", "text": " "} for i in range(10)]

    def job(name: str, rows: list[dict], **sink) -> Path:
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps({
            "source": {"path": str(tmp_path / f"{name}.parquet"), "text_column": "text",
                       "id_column": "doc_id", "rows_per_block": 8},
            "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8},
            "sink": sink or {"kind": "edge", "path": str(tmp_path / f"{name}-store")},
            "run": {"dir": str(runs), "progress": False},
        }))  # fmt: skip
        return path

    assert main(["ingest", "-c", str(job("good", good))]) == 0
    assert main(["ingest", "-c", str(job("blank", good + blank))]) == 3
    refusing = Faults(paths=("/points",), methods=("PUT",), outage=10**9)
    with QdrantStandIn(faults=refusing) as server:
        failing = job("failing", good, kind="qdrant", url=server.url, collection="docs",
                      retry_attempts=1, max_failed_batches=1)  # fmt: skip
        assert main(["ingest", "-c", str(failing)]) == 1
    slow = job("slow", [dict(r) for r in module_docs[:200]])
    command = [sys.executable, "-m", "colray.cli", "ingest", "-c", str(slow)]
    with interruptible():
        interrupted = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any(len(log.read_text().split()) >= 8 for log in runs.glob("resume/*/done.log")):
        assert interrupted.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    interrupted.send_signal(2)
    interrupted.communicate(timeout=60)
    assert interrupted.returncode == 130
    capsys.readouterr()

    assert main(["runs", "--dir", str(runs), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["outcome"] for r in listed] == ["interrupted", "failed", "too_many_dead_letters",
                                              "succeeded"]  # fmt: skip
    assert [r["written"] for r in listed][1:] == [0, 10, 10] and 8 <= listed[0]["written"] < 200
    assert listed[2]["dead_lettered"] == 10 and listed[3]["rows"] == 10
    assert main(["runs", "show", listed[1]["id"], "--dir", str(runs)]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"{listed[1]['id']}: failed (exit 1)") and "SinkUnavailable" in shown
    assert main(["runs", "show", listed[2]["id"], "--dir", str(runs)]) == 0
    assert "10  embed: EmptyText" in capsys.readouterr().out
    # Prune keeps the newest run, and the interrupted run's resume state, which a rerun needs.
    assert main(["runs", "prune", "--keep", "1", "--dir", str(runs)]) == 0
    assert "removed 3 run(s)" in capsys.readouterr().out
    assert sorted(p.name for p in runs.iterdir()) == sorted([listed[0]["id"], "resume"])
    assert list(runs.glob("resume/*/done.log"))


# --- metrics ---------------------------------------------------------------------------------

JOB = """
import pathlib, sys, time
import colray
signals = pathlib.Path(sys.argv[2])
try:
    colray.ingest(sys.argv[1])
finally:
    # Ray goes down with this process: hold it until the test has scraped the final values.
    (signals / "ingested").touch()
    deadline = time.monotonic() + 60
    while not (signals / "scraped").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
"""


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            return answer.read().decode()
    except OSError:
        return ""


def value(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        # Ray's export prefixes application metrics with ray_, as infra's dashboard expects.
        match = re.match(rf"ray_{name}(?:_total)?{{(.*)}} ([0-9.e+-]+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


@pytest.mark.slow
def test_a_running_job_exports_its_metrics_to_prometheus(tmp_path, module_docs, onnx_cache):
    rows = [dict(r) for r in module_docs[:120]] + [
        {"doc_id": f"blank-{i}", "title": "", "text": " "} for i in range(4)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "docs.parquet")
    port = free_port()
    faults = Faults(rate=0.2, seed=2, paths=("/points",))
    # Upserts that take a while, as on a loaded server: the run lasts long enough for several
    # metric exports (Ray's export interval, not colray, decides how often values move).
    with QdrantStandIn(api_key="metrics-s3cret", faults=faults, upsert_delay_s=0.3) as server:
        (tmp_path / "job.yaml").write_text(json.dumps({
            "source": {"path": str(tmp_path / "docs.parquet"), "text_column": "text",
                       "id_column": "doc_id", "rows_per_block": 8},
            "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8},
            "sink": {"kind": "qdrant", "url": server.url, "collection": "docs", "writers": 2,
                     "batch_size": 4, "retry_wait_initial_s": 0.01, "retry_wait_max_s": 0.05,
                     "retry_attempts": 30},
            "run": {"dir": str(tmp_path / "runs"), "progress": False, "metrics_port": port,
                    "max_failed_fraction": 0.5},
        }))  # fmt: skip
        env = {**os.environ, "RAY_metrics_report_interval_ms": "250",
               "COLRAY_SINK__API_KEY": "metrics-s3cret"}  # fmt: skip
        env.pop("RAY_ADDRESS", None)
        job = subprocess.Popen([sys.executable, "-c", JOB, str(tmp_path / "job.yaml"),
                                str(tmp_path)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        seen: list[float] = []
        last = ""
        deadline = time.monotonic() + 400
        final_by = None  # once the run is over, its last values reach the export within seconds
        while time.monotonic() < deadline and job.poll() is None:
            text = scrape(port)
            if text:
                last = text
                seen.append(value(text, "colray_points_written"))
            if final_by is None and (tmp_path / "ingested").exists():
                final_by = time.monotonic() + 30
            finished = (
                value(last, "colray_rows_read") == 124
                and seen[-1:] == [120]
                # the writer actors export their own retries, a moment later perhaps
                and value(last, "colray_write_retries") >= sum(faults.injected.values())
            )
            if final_by is not None and (finished or time.monotonic() > final_by):
                break
            time.sleep(0.2)
        (tmp_path / "scraped").touch()
        _, err = job.communicate(timeout=60)
    assert job.returncode == 0, err[-3000:]
    growing = sorted(set(seen))
    assert len(growing) >= 3, seen  # scraped while it ran: it grew
    assert growing[-1] == 120  # and ended at the rows written
    assert value(last, "colray_rows_read") == 124
    assert value(last, "colray_dead_letters", stage="embed", error_class="EmptyText") == 4
    assert value(last, "colray_write_retries") >= sum(faults.injected.values()) > 0
    # Each retry is tagged with its kind: every injected fault of a kind shows under its tag.
    injected = {kind: sum(n for k, n in faults.injected.items() if k.startswith(kind))
                for kind in ("429", "5", "drop")}  # fmt: skip
    assert value(last, "colray_write_retries", reason="429") >= injected["429"]
    assert value(last, "colray_write_retries", reason="5xx") >= injected["5"]
    dropped = sum(value(last, "colray_write_retries", reason=r) for r in ("connection", "timeout"))
    assert dropped >= injected["drop"]
    assert sum(injected.values()) == sum(faults.injected.values())  # no kind left out
    assert 'sink="docs"' in last and "run_id=" in last
    assert "colray_write_batch_seconds" in last and "colray_embed_batch_seconds" in last
    assert "metrics-s3cret" not in last and server.url not in last
