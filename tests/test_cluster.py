"""Ray Jobs on a real two-raylet cluster started by the test: submission, reports, schedule slots.

The head takes no work (as on KubeRay), so the job's driver runs on one raylet and its actors
on the other. Also the pieces that need no cluster: ids per slot and what is forwarded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from colray import cluster
from colray.cli import main
from colray.config import ConfigError
from colray.sink import open_sink
from colray.sink.edge import EdgeSink

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_cluster(temp_dir: str, gcs_port: int) -> None:
    """Stop only this cluster's processes (`ray stop` would also stop the tests' own Ray).

    Its agents retitle themselves (`ray::DashboardAgent`), so they are found as descendants
    of the processes that name the cluster, collected before any of those exits.
    """
    mine: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if temp_dir in cmdline or f":{gcs_port}" in cmdline:
            mine[process.pid] = process
            with contextlib.suppress(psutil.NoSuchProcess):
                mine.update((c.pid, c) for c in process.children(recursive=True))
    for process in mine.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(list(mine.values()), timeout=10)
    for process in alive:
        process.kill()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """`ray start --head` and a second `ray start --address=...`: two raylets, one machine."""
    # Unix socket paths are short: the session lives under /tmp, not pytest's deep tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="colray-rc", dir="/tmp")
    port, dashboard_port = free_port(), free_port()

    # Every listening port chosen here: the defaults (e.g. the agent's 52365) are taken by
    # the tests' own Ray, and an agent that cannot bind leaves the cluster refusing jobs.
    def agent_ports() -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}"]  # fmt: skip

    ray = str(Path(sys.executable).parent / "ray")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # A machine-wide ~/.ray/auth_token would make the second raylet's handshake fail.
        "RAY_AUTH_MODE": "disabled",
    }
    env.pop("RAY_ADDRESS", None)
    common = ["--disable-usage-stats", "--object-store-memory=200000000"]
    try:
        subprocess.run(
            [ray, "start", "--head", f"--port={port}", f"--dashboard-port={dashboard_port}",
             "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=0",
             f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}",
             *agent_ports(), *common],
            env=env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        subprocess.run(
            [ray, "start", f"--address=127.0.0.1:{port}", "--num-cpus=2", *agent_ports(),
             *common],
            env=env, check=True, capture_output=True, timeout=180,
        )  # fmt: skip
        address = f"http://127.0.0.1:{dashboard_port}"
        from ray.util.state import list_nodes

        deadline = time.monotonic() + 120
        while len([n for n in list_nodes(address=address) if n.state == "ALIVE"]) < 2:
            assert time.monotonic() < deadline, "the second raylet never joined"
            time.sleep(1)
        yield address
    finally:
        stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def project(tmp_path: Path, small_corpus: Path, onnx_cache: str) -> Path:
    """A working directory as a user's would be: the job entrypoints and a config."""
    shutil.copytree(ROOT / "jobs", tmp_path / "project" / "jobs")
    config = {
        "source": {"path": str(small_corpus), "text_column": "text", "id_column": "doc_id",
                   "payload_columns": ["title"], "rows_per_block": 10},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 10,
                  "num_actors": 2, "cpus_per_actor": 0.5},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs"), "progress": False},
    }  # fmt: skip
    (tmp_path / "project" / "job.yaml").write_text(json.dumps(config))
    return tmp_path / "project"


def wait_for_end(address: str, submission_id: str, timeout_s: float = 400) -> cluster.JobState:
    deadline = time.monotonic() + timeout_s
    while True:
        state = cluster.job_state(address, submission_id)
        if state.status in cluster.TERMINAL:
            return state
        assert time.monotonic() < deadline, f"job still {state.status}"
        time.sleep(2)


@pytest.mark.slow
def test_a_submitted_job_ingests_across_two_raylets_and_a_slot_runs_once(
    ray_cluster, project, tmp_path, capsys
):
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors, list_nodes

    config = str(project / "job.yaml")
    submission = cluster.submit(
        address=ray_cluster, config=config, working_dir=str(project), slot="2026-11-24t03"
    )
    assert not submission.already_submitted
    assert submission.entrypoint == "python jobs/ingest.py --config job.yaml"

    # The schedule fires again for the same slot: refused by Ray, reported, exit 0.
    code = main(["submit", "--address", ray_cluster, "--config", config,
                 "--working-dir", str(project), "--schedule-slot", "2026-11-24t03"])  # fmt: skip
    assert code == 0
    out, err = capsys.readouterr()
    assert out.strip() == submission.submission_id and "already submitted" in err

    state = wait_for_end(ray_cluster, submission.submission_id)
    logs = cluster.job_logs(ray_cluster, submission.submission_id)
    assert state.status == "SUCCEEDED", logs[-3000:]
    assert cluster.exit_code(state) == 0
    jobs = JobSubmissionClient(ray_cluster).list_jobs()
    assert [j.submission_id for j in jobs].count(submission.submission_id) == 1
    assert len(jobs) == 1  # the second firing started nothing

    # The report outlives the job: `colray status` finds it in the job's logs.
    assert main(["status", "--address", ray_cluster, "--json", submission.submission_id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "SUCCEEDED"
    assert shown["report"]["rows_read"] == shown["report"]["points_written"] == 60
    assert shown["report"]["points_in_store"] == 60

    # Following an ended job prints its logs to the end and exits with its outcome.
    assert main(["logs", "--address", ray_cluster, "--follow", submission.submission_id]) == 0
    assert cluster.REPORT_MARKER in capsys.readouterr().out

    # An id the cluster never saw is a clear error, not a trace.
    assert main(["status", "--address", ray_cluster, "colray-no-such-job"]) == 2
    assert "no job 'colray-no-such-job'" in capsys.readouterr().err

    # Every point is in the store the job wrote, each row once.
    store = open_sink(cluster_sink(project), [])
    assert isinstance(store, EdgeSink)
    store.open_for_reading()
    keys = [h.payload["_colray"]["key"] for h in store.retrieve_all(with_vectors=False)]
    store.close()
    assert len(keys) == len(set(keys)) == 60

    # Two raylets: the driver on the head, the embedding actors on the worker node.
    nodes = {n.node_id: n for n in list_nodes(address=ray_cluster)}
    assert len(nodes) == 2
    info = JobSubmissionClient(ray_cluster).get_job_info(submission.submission_id)
    head = info.driver_node_id
    assert nodes[head].is_head_node
    embedders = [
        a for a in list_actors(address=ray_cluster, detail=True, limit=1000)
        if "EmbedStage" in (a.class_name or "") or "MapWorker" in (a.class_name or "")
    ]  # fmt: skip
    assert embedders and all(a.node_id != head for a in embedders)


def cluster_sink(project: Path):
    from colray.config import load_settings

    return load_settings(str(project / "job.yaml")).sink


def test_a_schedule_slot_names_one_period_and_one_submission_id():
    every = 60
    early = dt.datetime(2026, 11, 24, 3, 0, 5, tzinfo=dt.UTC)
    late = dt.datetime(2026, 11, 24, 3, 59, 59, tzinfo=dt.UTC)
    next_hour = dt.datetime(2026, 11, 24, 4, 0, 0, tzinfo=dt.UTC)
    assert cluster.schedule_slot(every, early) == cluster.schedule_slot(every, late)
    assert cluster.schedule_slot(every, early) == "20261124t0300z"
    assert cluster.schedule_slot(every, next_hour) == "20261124t0400z"
    argv = ["python", "jobs/reindex.py", "--config", "job.yaml"]
    first = cluster.scheduled_submission_id("reindex", "a: 1", argv, "20261124t0300z")
    assert first == cluster.scheduled_submission_id("reindex", "a: 1", argv, "20261124t0300z")
    assert first != cluster.scheduled_submission_id("reindex", "a: 2", argv, "20261124t0300z")
    assert first != cluster.scheduled_submission_id("reindex", "a: 1", argv, "20261124t0400z")
    assert first != cluster.scheduled_submission_id("ingest", "a: 1", argv, "20261124t0300z")
    with pytest.raises(ConfigError, match="--schedule-slot"):
        cluster.scheduled_submission_id("ingest", "a: 1", argv, "no spaces allowed")


def test_the_api_key_stays_home_and_other_settings_travel(monkeypatch):
    monkeypatch.setenv("COLRAY_SINK__API_KEY", "s3cr3t-key")
    monkeypatch.setenv("COLRAY_EMBED__BATCH_SIZE", "16")
    forwarded = cluster.forwarded_env()
    assert forwarded["COLRAY_EMBED__BATCH_SIZE"] == "16"
    assert "COLRAY_SINK__API_KEY" not in forwarded
    assert "s3cr3t-key" not in json.dumps(forwarded)


def test_a_bad_config_fails_before_the_cluster_is_contacted(tmp_path, capsys):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "ingest.py").write_text("")
    bad = tmp_path / "job.yaml"
    bad.write_text("source: {path: x.parquet, text_column: text}\nembed: {batch_size: -3}\n")
    # Nothing listens on port 9: a config error must come before any connection attempt.
    code = main(["submit", "--address", "http://127.0.0.1:9", "-c", str(bad),
                 "--working-dir", str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "embed.batch_size" in capsys.readouterr().err


def test_a_config_outside_the_working_dir_is_refused(tmp_path, capsys):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "jobs", project / "jobs")
    (tmp_path / "data.parquet").write_bytes(b"")
    outside = tmp_path / "job.yaml"
    outside.write_text(
        "source: {path: data.parquet, text_column: text}\nsink: {kind: edge, path: store}\n"
    )
    code = main(["submit", "--address", "http://127.0.0.1:9", "-c", str(outside),
                 "--working-dir", str(project)])  # fmt: skip
    assert code == 2
    assert "outside the working directory" in capsys.readouterr().err
