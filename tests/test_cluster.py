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
from typing import Any

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
    # Some of Ray's processes sit out SIGTERM; a test cluster's state is not worth waiting for.
    _, alive = psutil.wait_procs(list(mine.values()), timeout=3)
    for process in alive:
        process.kill()


class ClusterAddress(str):
    """The dashboard address of the test's cluster, which can also start worker nodes."""

    start_worker: Any


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[ClusterAddress]:
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
        # A SIGKILLed raylet is declared dead after about 3 s instead of Ray's 15-30 s: the
        # node-death test waits for that, and a real cluster's defaults are not what it tests.
        "RAY_health_check_initial_delay_ms": "1000",
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "2000",
        "RAY_health_check_failure_threshold": "3",
    }
    env.pop("RAY_ADDRESS", None)
    common = ["--disable-usage-stats", "--object-store-memory=200000000"]

    def ray_start(*args: str, attempts: int = 1) -> None:
        # A port picked free can be taken by the time Ray binds it, and a loaded machine can
        # time a node's start out: a worker tries again with fresh ports; then Ray's words.
        for _ in range(attempts):
            run = subprocess.run([ray, "start", *args, *agent_ports(), *common], env=env,
                                 capture_output=True, text=True, timeout=180)  # fmt: skip
            if run.returncode == 0:
                return
            time.sleep(2)
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{run.stdout[-2000:]}\n"
                           f"{run.stderr[-3000:]}")  # fmt: skip

    def start_worker() -> None:
        # Four logical CPUs on two cores: two jobs at once fit on one worker node.
        ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=4", attempts=3)

    try:
        ray_start("--head", f"--port={port}", f"--dashboard-port={dashboard_port}",
                  "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=0",
                  f"--temp-dir={temp_dir}", f"--ray-client-server-port={free_port()}")  # fmt: skip
        start_worker()
        address = ClusterAddress(f"http://127.0.0.1:{dashboard_port}")
        address.start_worker = start_worker
        wait_for_alive_nodes(address, 2)
        yield address
    finally:
        stop_cluster(temp_dir, port)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_alive_nodes(address: str, count: int, timeout_s: float = 120) -> None:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + timeout_s
    while len([n for n in list_nodes(address=address) if n.state == "ALIVE"]) < count:
        assert time.monotonic() < deadline, f"fewer than {count} nodes alive"
        time.sleep(1)


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


def kill_worker_raylets(address: str) -> list[str]:
    """SIGKILL the raylet of every node but the head, as a machine that died would leave it."""
    from ray.util.state import list_nodes

    workers = [n.node_id for n in list_nodes(address=address)
               if n.state == "ALIVE" and not n.is_head_node]  # fmt: skip
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "raylet" in cmdline and any(f"--node_id={node}" in cmdline for node in workers):
            process.kill()
    return workers


@pytest.mark.slow
def test_jobs_survive_losing_their_worker_node(ray_cluster, tmp_path, onnx_cache, capsys):
    """Two jobs at once, one writing a local store from its driver, one writing a Qdrant server
    through writer actors that sit on the worker node: that node's raylet is SIGKILLed mid-run,
    a replacement joins, and both finish with every row exactly once."""
    from qdrant_client import QdrantClient
    from ray.util.state import list_actors

    from colray.demo import stdlib_docstrings, write_corpus
    from qdrant_standin import QdrantStandIn

    rows = list(stdlib_docstrings())[:320]
    corpus = write_corpus(rows, tmp_path / "docs", rows_per_file=100)
    project = tmp_path / "project"
    shutil.copytree(ROOT / "jobs", project / "jobs")
    base = {
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                   "rows_per_block": 8},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8,
                  "cpus_per_actor": 0.5, "threads_per_actor": 1},
        "run": {"progress": False},
    }  # fmt: skip
    with QdrantStandIn() as server:
        configs = {
            "local": {**base, "sink": {"kind": "edge", "path": str(tmp_path / "store")},
                      "run": {**base["run"], "dir": str(tmp_path / "runs-local")}},
            "server": {**base, "sink": {"kind": "qdrant", "url": server.url, "collection": "docs",
                                        "writers": 2, "cpus_per_writer": 0.25, "batch_size": 8},
                       "run": {**base["run"], "dir": str(tmp_path / "runs-server")}},
        }  # fmt: skip
        jobs = {}
        for name, config in configs.items():
            (project / f"{name}.yaml").write_text(json.dumps(config))
            jobs[name] = cluster.submit(address=ray_cluster, config=str(project / f"{name}.yaml"),
                                        working_dir=str(project)).submission_id  # fmt: skip
        reader = QdrantClient(url=server.url, timeout=10)

        def progress() -> tuple[int, int]:
            logs = list((tmp_path / "runs-local").glob("resume/*/done.log"))
            local = len(logs[0].read_text().splitlines()) if logs else 0
            try:
                remote = reader.count("docs").count
            except Exception:  # the collection is not there yet
                remote = 0
            return local, remote

        deadline = time.monotonic() + 480  # two jobs' start-up on a busy 2-core machine
        while min(progress()) < 40:
            states = [cluster.job_state(ray_cluster, j).status for j in jobs.values()]
            assert not set(states) & cluster.TERMINAL, (states, progress())
            assert time.monotonic() < deadline, f"no progress: {progress()}"
            time.sleep(0.5)
        # While they run, `colray status` shows each job's progress as it grows.
        first = cluster.job_state(ray_cluster, jobs["local"]).progress
        second = first
        deadline = time.monotonic() + 90  # the job prints its progress every 5 s at most
        while second == first and time.monotonic() < deadline:
            time.sleep(1)
            second = cluster.job_state(ray_cluster, jobs["local"]).progress
        assert first and second and second["rows_done"] > first["rows_done"], (first, second)
        assert second["phase"] == "loading" and second["rows_total"] == len(rows)
        assert second["eta_s"] is not None and second["rows_per_s"] > 0
        shown = cluster.describe_progress(second)
        assert "rows done" in shown and "ETA" in shown and "rows/s over the last minute" in shown
        # ... and the command itself, as people run it: one job, as text and JSON, and all.
        capsys.readouterr()
        assert main(["status", jobs["local"], "--address", ray_cluster]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{jobs['local']}: RUNNING") and "rows done" in out and "ETA" in out
        assert main(["status", jobs["local"], "--address", ray_cluster, "--json"]) == 0
        running = json.loads(capsys.readouterr().out)
        assert running["status"] == "RUNNING" and running["report"] is None
        assert running["progress"]["phase"] == "loading"
        assert running["progress"]["rows_total"] == len(rows)
        assert main(["status", "--address", ray_cluster]) == 0
        listed = capsys.readouterr().out.splitlines()
        for job_id in jobs.values():
            (line,) = [line for line in listed if line.startswith(job_id)]
            assert "RUNNING" in line and "ingest" in line
        before = progress()
        lost = kill_worker_raylets(ray_cluster)
        assert lost, "no worker node to kill"
        ray_cluster.start_worker()
        states = {name: wait_for_end(ray_cluster, j, timeout_s=500) for name, j in jobs.items()}
        for name, state in states.items():
            assert state.status == "SUCCEEDED", cluster.job_logs(ray_cluster, jobs[name])[-3000:]
            report = state.report
            assert report["rows_read"] == report["points_written"] == len(rows), (name, report)
            assert report["points_in_store"] == len(rows) and report["dead_lettered"] == 0
        assert max(before) < len(rows)  # the node died mid-run
        records, _ = reader.scroll("docs", limit=10_000, with_payload=True)
        keys = [r.payload["_colray"]["key"] for r in records]
        assert len(keys) == len(set(keys)) == len(rows)
        reader.close()
    store = open_sink(load_settings_of(project / "local.yaml").sink, [])
    store.open_for_reading()
    local_keys = [h.payload["_colray"]["key"] for h in store.retrieve_all(with_vectors=False)]
    store.close()
    assert len(local_keys) == len(set(local_keys)) == len(rows)
    # The server job's writers reserve CPUs, which only the lost node had: they were on it,
    # and Ray restarted them on the replacement.
    writers = [a for a in list_actors(address=ray_cluster, detail=True, limit=10_000)
               if a.class_name == "SinkWriter"]  # fmt: skip
    assert len(writers) == 2 and all((a.num_restarts or 0) >= 1 for a in writers), writers


def load_settings_of(path: Path):
    from colray.config import load_settings

    return load_settings(str(path))


def test_a_forwarded_override_is_another_scheduled_job(tmp_path, monkeypatch):
    config = tmp_path / "job.yaml"
    config.write_text("source: {path: d, text_column: t}\nsink: {kind: edge, path: s}\n")
    argv = ["python", "jobs/ingest.py", "--config", "job.yaml"]
    monkeypatch.delenv("COLRAY_EMBED__BATCH_SIZE", raising=False)
    plain = cluster.slot_submission_id("ingest", config, argv, "20261124t0300z")
    monkeypatch.setenv("COLRAY_EMBED__BATCH_SIZE", "16")
    overridden = cluster.slot_submission_id("ingest", config, argv, "20261124t0300z")
    assert overridden != plain
    assert overridden == cluster.slot_submission_id("ingest", config, argv, "20261124t0300z")
    monkeypatch.setenv("COLRAY_SINK__API_KEY", "not part of the job")
    assert cluster.slot_submission_id("ingest", config, argv, "20261124t0300z") == overridden


@contextlib.contextmanager
def refusing_dashboard(refuse: str = "jobs") -> Iterator[str]:
    """A Ray dashboard's job API, over real HTTP, that takes the upload and refuses the job;
    or (`refuse`) refuses its version check, or answers for a job and refuses its logs."""
    import asyncio
    import threading

    import ray
    from aiohttp import web

    async def version(request: web.Request) -> web.Response:
        if refuse == "version":
            return web.Response(status=403, text="Forbidden: the proxy wants a token")
        return web.json_response({"version": "4", "ray_version": ray.__version__,
                                  "ray_commit": ray.__commit__, "session_name": "s"})  # fmt: skip

    async def package(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=404 if request.method == "GET" else 200)

    async def jobs(request: web.Request) -> web.Response:
        return web.Response(status=500, text="Internal Server Error: the job manager is down")

    async def job(request: web.Request) -> web.Response:
        return web.json_response({"type": "SUBMISSION", "job_id": None, "status": "RUNNING",
                                  "submission_id": request.match_info["id"], "entrypoint": "x",
                                  "message": "", "metadata": {}})  # fmt: skip

    async def logs(request: web.Request) -> web.Response:
        return web.Response(status=503, text="Service Unavailable: the log agent is gone")

    loop = asyncio.new_event_loop()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_get("/api/version", version)
    app.router.add_route("*", "/api/packages/{tail:.*}", package)
    app.router.add_post("/api/jobs/", jobs)
    app.router.add_get("/api/jobs/{id}", job)
    app.router.add_get("/api/jobs/{id}/logs", logs)
    runner = web.AppRunner(app, access_log=None)
    port = free_port()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    time.sleep(0.5)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_a_refusal_from_the_dashboard_is_one_line_and_exit_1(tmp_path, capsys):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "jobs", project / "jobs")
    config = project / "job.yaml"
    config.write_text(
        "source: {path: data.parquet, text_column: text}\nsink: {kind: edge, path: store}\n"
    )
    with refusing_dashboard() as address:
        code = main(["submit", "--address", address, "-c", str(config),
                     "--working-dir", str(project)])  # fmt: skip
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("colray:")]
    assert len(err) == 1 and err[0].startswith("colray: the Ray dashboard at http://127.0.0.1:")
    assert "refused to submit the job: HTTP 500" in err[0] and "job manager is down" in err[0]


@pytest.mark.parametrize(
    ("refuse", "command", "action"),
    [("version", ["status", "colray-ingest-x"], "answer its version check: Authentication failed"),
     ("logs", ["status", "colray-ingest-x"], "give the logs of job 'colray-ingest-x': HTTP 503"),
     ("logs", ["logs", "colray-ingest-x"], "give the logs of job 'colray-ingest-x': HTTP 503")],
)  # fmt: skip
def test_every_refusal_from_the_dashboard_is_one_line(refuse, command, action, capsys):
    with refusing_dashboard(refuse) as address:
        assert main([*command, "--address", address]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("colray: the Ray dashboard at http://127.0.0.1:")
    assert action in err[0], err[0]
