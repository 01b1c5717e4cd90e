"""The production path against a Qdrant server over HTTP (the stand-in in qdrant_standin.py):
writer actors under HTTP faults, waiting through indexing, alias switches while a reader
queries, and every way a run can fail ending in one line, a report and a resumable state."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from qdrant_client import QdrantClient

import colray
from colray.config import SinkConfig, load_settings
from colray.errors import IndexingTimeout, WorkerFailed
from colray.layout import VectorSpec
from colray.rows import point_id
from colray.sink import Point
from colray.sink.qdrant import QdrantSink
from page_data import BAD_PAGES, GOOD_PAGES, MAX_PIXELS
from qdrant_standin import MAX_BODY_BYTES, Faults, QdrantStandIn

SECRET = "s3rv3r-k3y-that-must-not-leak"
FAST_RETRIES = {"retry_attempts": 40, "retry_timeout_s": 120, "retry_wait_initial_s": 0.01,
                "retry_wait_max_s": 0.05}  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def text_job(tmp_path: Path, corpus: Path, onnx_cache: str, server: QdrantStandIn, **sink) -> Path:
    config = {
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                   "payload_columns": ["title"], "rows_per_block": 8},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8},
        "sink": {"kind": "qdrant", "url": server.url, "collection": "docs", "writers": 3,
                 "batch_size": 4, **FAST_RETRIES, **sink},
        "run": {"dir": str(tmp_path / "runs"), "progress": False,
                "ray_address": os.environ["COLRAY_TEST_RAY_ADDRESS"]},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def ray_address(ray_session, monkeypatch) -> str:
    address = ray_session.get_runtime_context().gcs_address
    monkeypatch.setenv("COLRAY_TEST_RAY_ADDRESS", address)
    return address


def run_cli(
    *args: str, key: str | None = SECRET, timeout: int = 400
) -> subprocess.CompletedProcess:
    """`colray ...` in its own process, as a user runs it (the API key from the environment)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLRAY_SINK")}
    if key:
        env["COLRAY_SINK__API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "colray.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def stored_keys(server: QdrantStandIn, collection: str = "docs") -> list[str]:
    client = QdrantClient(url=server.url, api_key=server.api_key, timeout=30)
    records, _ = client.scroll(collection, limit=10_000, with_payload=True)
    client.close()
    return [r.payload["_colray"]["key"] for r in records]


def assert_no_secret(*texts: str, paths: list[Path] = ()) -> None:
    for text in texts:
        assert SECRET not in text
    for root in paths:
        for path in root.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_three_writers_under_http_faults_write_every_row_once(
    ray_address, tmp_path, small_corpus, onnx_cache
):
    faults = Faults(rate=0.3, seed=3, paths=("/collections",))
    with QdrantStandIn(api_key=SECRET, faults=faults) as server:
        job = text_job(tmp_path, small_corpus, onnx_cache, server, batch_size=2)
        run = run_cli("ingest", "--config", str(job), "--report", str(tmp_path / "report.json"))
        assert run.returncode == 0, run.stderr[-3000:]
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["rows_read"] == report["points_written"] == report["points_in_store"] == 60
        assert report["dead_lettered"] == 0 and report["outcome"] == "succeeded"
        faults.rate = 0  # the test's own reads
        keys = stored_keys(server)
        assert len(keys) == len(set(keys)) == 60  # every row once
        upserts = [r for r in server.requests if r.method == "PUT" and r.path.endswith("/points")]
        assert len(upserts) >= 30  # 60 rows, batches of 2, through the writer actors
        # Every upsert the server failed was retried, and the report counts the retries.
        assert report["write_retries"] >= sum(r.status != 200 for r in upserts) > 0
        injected = faults.injected
        assert sum(injected.values()) >= 8, injected  # the faults really happened
        assert injected["drop before"] + injected["drop after"] > 0, injected
        assert sum(n for kind, n in injected.items() if kind.endswith("after")) > 0, injected
        assert server.largest_body() < MAX_BODY_BYTES and server.errors == []
        assert 400 not in server.status_counts() and 401 not in server.status_counts()
        assert_no_secret(run.stdout, run.stderr, json.dumps(report), paths=[tmp_path / "runs"])
        # ... nor in what Ray's GCS keeps of the jobs (entrypoints) and actors, which its
        # dashboard shows (this session's Ray has none, so read the GCS tables directly).
        import ray._private.state as ray_state

        actors = list(ray_state.actors().values())
        assert any("SinkWriter" in a["ActorClassName"] for a in actors)
        assert_no_secret(json.dumps([ray_state.jobs(), actors], default=str))


@pytest.mark.slow
def test_page_images_through_three_writers_under_faults(
    ray_address, tmp_path, page_corpus, vision_models, monkeypatch
):
    faults = Faults(rate=0.2, seed=5, paths=("/points",))
    monkeypatch.setenv("COLRAY_SINK__API_KEY", SECRET)
    with QdrantStandIn(api_key=SECRET, faults=faults) as server:
        settings = load_settings(
            None,
            base={
                "source": {"path": str(page_corpus), "image_column": "image",
                           "id_column": "page_id", "payload_columns": ["caption"]},
                "image": {"model": str(vision_models["colqwen2"]), "batch_size": 3,
                          "rows_per_call": 4, "cpus_per_actor": 0.5, "decode_cpus": 0.5,
                          "max_pixels": MAX_PIXELS},
                "sink": {"kind": "qdrant", "url": server.url, "collection": "pages",
                         "writers": 3, "batch_size": 2, **FAST_RETRIES},
                "run": {"dir": str(tmp_path / "runs"), "progress": False,
                        "max_failed_fraction": 0.5},
            },
        )  # fmt: skip
        report = colray.ingest(settings)
        assert report.points_written == report.points_in_store == GOOD_PAGES
        dead = {d["row_key"] for d in pq.read_table(report.dead_letter_path).to_pylist()}
        assert dead == set(BAD_PAGES)  # decoding failures only: no write was lost to a fault
        assert report.rows_read == GOOD_PAGES + len(BAD_PAGES) and report.dead_lettered == len(
            BAD_PAGES
        )
        keys = stored_keys(server, "pages")
        assert len(keys) == len(set(keys)) == GOOD_PAGES
        assert sum(faults.injected.values()) > 0 and server.errors == []
        assert server.largest_body() < MAX_BODY_BYTES and 401 not in server.status_counts()
        assert_no_secret(report.to_json(), paths=[tmp_path / "runs"])


def sink_for(server: QdrantStandIn, **cfg) -> QdrantSink:
    config = SinkConfig(kind="qdrant", url=server.url, collection="c", **{**FAST_RETRIES, **cfg})
    sink = QdrantSink(config, [VectorSpec("text", 8)])
    sink.prepare()
    rng = np.random.default_rng(0)
    sink.write([Point(point_id("t", str(i)), {"text": rng.normal(size=(3, 8)).astype(np.float32)})
                for i in range(40)])  # fmt: skip
    return sink


def test_a_strict_mode_rate_limit_is_waited_out_as_the_server_asks():
    """Qdrant's strict mode answers 429 with Retry-After: the writer waits that long (not its
    own short backoff) before it tries again, and every point arrives."""
    with QdrantStandIn(rate_limit=(4, 1)) as server:
        config = SinkConfig(kind="qdrant", url=server.url, collection="c", batch_size=2,
                            **FAST_RETRIES)  # fmt: skip
        sink = QdrantSink(config, [VectorSpec("text", 8)])
        sink.prepare()
        rng = np.random.default_rng(0)
        points = [Point(point_id("t", str(i)), {"text": rng.normal(size=(3, 8)).astype(np.float32)})
                  for i in range(24)]  # fmt: skip
        for i in range(0, len(points), 2):  # 12 upserts: three times the limit
            sink.write(points[i : i + 2])
        assert sink.count() == 24
        sink.close()
    upserts = [r for r in server.requests if r.method == "PUT" and r.path.endswith("/points")]
    limited = [i for i, r in enumerate(upserts) if r.status == 429]
    assert limited, [r.status for r in upserts]
    for i in limited:  # the next attempt came no sooner than the server's Retry-After
        assert upserts[i + 1].at - upserts[i].at >= 0.95, (i, upserts[i + 1].at - upserts[i].at)
    assert sum(r.status == 200 for r in upserts) == 12


@pytest.mark.parametrize("upsert_wait", [True, False])
def test_upserts_answered_once_queued_are_all_applied_before_indexing(upsert_wait):
    """A server applies updates in order, behind its write-ahead log: with upsert_wait false
    the writes are answered before they are applied (half of them also failing, before or
    after being queued), and finalize's barrier still counts every point, each once."""
    faults = Faults(rate=0.5, seed=1, paths=("/points",), methods=("PUT",))
    with QdrantStandIn(faults=faults, apply_s=0.03) as server:
        config = SinkConfig(kind="qdrant", url=server.url, collection="c", batch_size=2,
                            upsert_wait=upsert_wait, **FAST_RETRIES)  # fmt: skip
        sink = QdrantSink(config, [VectorSpec("text", 8)])
        sink.prepare()
        rng = np.random.default_rng(0)
        points = [Point(point_id("t", str(i)), {"text": rng.normal(size=(3, 8)).astype(np.float32)})
                  for i in range(40)]  # fmt: skip
        for i in range(0, len(points), 2):
            sink.write(points[i : i + 2])
        queued = server.unapplied()
        result = sink.finalize()
        faults.rate = 0.0
        assert result.status == "green" and result.points == sink.count() == 40
        sink.close()
    assert server.unapplied() == 0 and server.errors == []
    assert sum(faults.injected.values()) >= 5, faults.injected
    if upsert_wait:  # every answer came after its write was applied
        assert queued == 0 and server.acknowledged == 0
    else:
        assert queued > 0 and server.acknowledged >= 20


def test_finalize_waits_through_yellow_with_the_servers_progress():
    with QdrantStandIn(yellow_for_s=2.0) as server:
        sink = sink_for(server)
        result = sink.finalize(progress=True)
        sink.close()
    assert result.status == "green" and result.points == 40 and result.seconds >= 2.0
    statuses = [p["status"] for p in result.progress]
    assert statuses[0] == "yellow" and statuses[-1] == "green"
    queued = [p["queued_points"] for p in result.progress if p["status"] == "yellow"]
    assert queued and queued == sorted(queued, reverse=True) and queued[0] > 0


def test_a_collection_that_never_turns_green_times_out():
    with QdrantStandIn(never_green=True) as server:
        sink = sink_for(server, ready_timeout_s=1.0)
        with pytest.raises(
            IndexingTimeout, match=r"still yellow after 1s \(sink.ready_timeout_s\)"
        ):
            sink.finalize()
        sink.close()


@pytest.mark.slow
def test_indexing_timeout_ends_the_run_with_exit_1_and_a_report(
    ray_address, tmp_path, small_corpus, onnx_cache
):
    with QdrantStandIn(never_green=True) as server:
        job = text_job(tmp_path, small_corpus, onnx_cache, server, ready_timeout_s=1)
        run = run_cli("ingest", "--config", str(job), key=None)
    assert run.returncode == 1, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.startswith("colray:")]
    assert len(lines) == 1 and "still yellow" in lines[0] and "ready_timeout_s" in lines[0]
    report = json.loads(Path(run.stderr.split("report: ")[1].split()[0]).read_text())
    assert report["outcome"] == "failed" and "IndexingTimeout" in report["error"]
    assert report["points_written"] == 60  # what was done so far


@pytest.mark.slow
def test_a_server_that_stops_answering_stops_the_run_and_a_rerun_finishes_it(
    ray_address, tmp_path, small_corpus, onnx_cache
):
    faults = Faults(paths=("/points",), outage=10**9)  # every write fails from the start
    with QdrantStandIn(api_key=SECRET, faults=faults) as server:
        job = text_job(tmp_path, small_corpus, onnx_cache, server, retry_attempts=2,
                       max_failed_batches=3)  # fmt: skip
        run = run_cli("ingest", "--config", str(job))
        assert run.returncode == 1, run.stderr[-2000:]
        lines = [line for line in run.stderr.splitlines() if line.startswith("colray:")]
        assert len(lines) == 1, run.stderr[-2000:]
        written = re.search(r"(\d+) batches in a row could not be written", lines[0])
        assert written and int(written.group(1)) >= 3, lines[0]  # each writer counts its own
        assert "503" in lines[0] and "check the server" in lines[0]
        assert "Traceback" not in run.stderr
        report = json.loads(Path(run.stderr.split("report: ")[1].split()[0]).read_text())
        assert report["outcome"] == "failed" and "SinkUnavailable" in report["error"]
        assert_no_secret(run.stdout, run.stderr, paths=[tmp_path / "runs"])
        # The server is back: the same job, run again, finishes with every row once.
        faults.outage = 0
        again = run_cli("ingest", "--config", str(job), "--report", str(tmp_path / "r2.json"))
        assert again.returncode == 0, again.stderr[-2000:]
        second = json.loads((tmp_path / "r2.json").read_text())
        assert second["points_in_store"] == 60 and second["outcome"] == "succeeded"
        keys = stored_keys(server)
        assert len(keys) == len(set(keys)) == 60


@pytest.mark.slow
def test_a_server_that_goes_away_mid_run_ends_it_in_one_line_with_a_report(
    tmp_path, small_corpus, onnx_cache, monkeypatch
):
    """Connections refused, not errors answered: the server process is gone. The writer (here
    the driver's: the path is the same in writer actors) stops after max_failed_batches."""
    monkeypatch.setenv("COLRAY_TEST_RAY_ADDRESS", "-")
    server = QdrantStandIn(api_key=SECRET, upsert_delay_s=0.3)
    server.start()
    try:
        config = yaml.safe_load(text_job(tmp_path, small_corpus, onnx_cache, server,
                                         retry_attempts=3, max_failed_batches=3).read_text())  # fmt: skip
        config["run"].pop("ray_address")
        job = tmp_path / "gone.yaml"
        job.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "colray.cli", "ingest", "-c", str(job), "--set",
                   "run.executor=local"]  # fmt: skip
        env = {**os.environ, "COLRAY_SINK__API_KEY": SECRET}
        run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while sum(r.path.endswith("/points") for r in server.requests) < 3:
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-2000:]
            time.sleep(0.05)
    finally:
        server.stop()  # mid-run: from here on every connection is refused
    _, err = run.communicate(timeout=300)
    assert run.returncode == 1, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("colray:")]
    assert len(lines) == 1 and "batches in a row could not be written" in lines[0], err[-2000:]
    assert "check the server" in lines[0] and "Traceback" not in err
    report = json.loads(Path(err.split("report: ")[1].split()[0]).read_text())
    assert report["outcome"] == "failed" and "SinkUnavailable" in report["error"]
    assert 0 < report["points_written"] < 60
    assert_no_secret(err, paths=[tmp_path / "runs"])


@pytest.mark.slow
def test_rows_out_of_retries_are_dead_letters_that_a_rerun_writes(
    ray_address, tmp_path, small_corpus, onnx_cache
):
    docs = pq.read_table(small_corpus).column("doc_id").to_pylist()
    poisoned = {point_id(str(small_corpus), key) for key in docs[10:12]}
    faults = Faults(paths=("/points",), fail_points=set(poisoned))
    with QdrantStandIn(faults=faults) as server:
        job = text_job(tmp_path, small_corpus, onnx_cache, server, retry_attempts=2,
                       batch_size=1, writers=1)  # fmt: skip
        first = run_cli("ingest", "--config", str(job), "--set", "run.max_failed_fraction=0.5",
                        "--report", str(tmp_path / "r1.json"), key=None)  # fmt: skip
        assert first.returncode == 0, first.stderr[-2000:]
        report = json.loads((tmp_path / "r1.json").read_text())
        assert report["points_written"] == 58 and report["retryable_dead_letters"] == 2
        dead = pq.read_table(report["dead_letter_path"]).to_pylist()
        assert {d["row_key"] for d in dead} == set(docs[10:12])
        assert {(d["stage"], d["error_class"]) for d in dead} == {("write", "RetriesExhausted")}
        assert all("503" in d["error"] for d in dead)  # the server's last answer
        faults.fail_points.clear()
        second = run_cli("ingest", "--config", str(job), "--report", str(tmp_path / "r2.json"),
                         key=None)  # fmt: skip
        assert second.returncode == 0, second.stderr[-2000:]
        again = json.loads((tmp_path / "r2.json").read_text())
        # Exactly the two rows are retried; the 58 written are skipped.
        assert again["points_written"] == 2 and again["skipped_existing"] == 58
        assert again["points_in_store"] == 60


def test_ray_that_cannot_start_is_one_line_and_a_report(tmp_path, small_corpus, onnx_cache):
    config = {
        "source": {"path": str(small_corpus), "text_column": "text"},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs"), "progress": False},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")  # Ray's temp folder would have to be made inside a file
    env = {**os.environ, "RAY_TMPDIR": str(blocker)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "colray.cli", "ingest", "-c", str(tmp_path / "job.yaml")]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("colray:")]
    assert len(lines) == 1 and "Ray could not start or join a local node" in lines[0]
    assert "ray start --head" in lines[0]
    report = json.loads(Path(run.stderr.split("report: ")[1].split()[0]).read_text())
    assert report["outcome"] == "failed" and report["rows_read"] == 0


def test_a_worker_that_cannot_start_is_a_run_failure(ray_session):
    from colray.pipeline import worker_failures

    @ray_session.remote(max_restarts=0)
    class Unloadable:
        def __init__(self) -> None:
            raise RuntimeError("the model's weights are gone")

        def ping(self) -> None: ...

    failed = pytest.raises(WorkerFailed, match=r"a Ray worker of the job failed.*weights are gone")
    with failed, worker_failures():
        ray_session.get(Unloadable.remote().ping.remote())


@pytest.mark.slow
def test_reindex_moves_the_alias_over_http_while_a_reader_queries(
    ray_session, tmp_path, module_docs, onnx_cache
):
    from colray.embed import load_embedder
    from test_reindex import assert_readers_never_saw_a_gap, rebuild_while_reading, tags

    # Upserts (PUT) fail; the reader's queries and counts (POST) do not, so any error the
    # reader sees is a gap in the alias swap, not a fault meant for colray's writer.
    faults = Faults(rate=0.1, seed=11, paths=("/points",), methods=("PUT",))
    with QdrantStandIn(faults=faults) as server:
        sink = {"kind": "qdrant", "url": server.url, "collection": "docs", **FAST_RETRIES}
        reader_client = QdrantClient(url=server.url, timeout=30)
        vector: dict = {}

        def query(settings):
            if not vector:
                embedder = load_embedder(settings.embed)
                vector["q"] = embedder.embed_query("compress files").tolist()
            count = reader_client.count("docs", exact=True).count
            hits = reader_client.query_points("docs", query=vector["q"], using="text", limit=5,
                                              with_payload=True).points  # fmt: skip
            return count, len(hits), tags([h.payload for h in hits])

        reader, reports, _ = rebuild_while_reading(tmp_path, module_docs, onnx_cache, sink, query)
        reader_client.close()
        assert_readers_never_saw_a_gap(reader, reports)
        aliases = QdrantClient(url=server.url).get_aliases().aliases
        assert [(a.alias_name, a.collection_name) for a in aliases] == [
            ("docs", f"docs__{reports[-1].reindex['version']}")
        ]
        assert server.errors == [] and sum(faults.injected.values()) > 0


def test_the_standin_refuses_what_a_server_refuses():
    """The limits colray's writer is tested against are really enforced over HTTP."""
    from qdrant_client import models
    from qdrant_client.http.exceptions import UnexpectedResponse

    with QdrantStandIn(api_key=SECRET) as server:
        with pytest.raises(UnexpectedResponse) as unauthorised:
            QdrantClient(url=server.url, timeout=10).get_collections()
        assert unauthorised.value.status_code == 401
        with pytest.raises(UnexpectedResponse) as forbidden:
            QdrantClient(url=server.url, api_key="wrong", timeout=10).get_collections()
        assert forbidden.value.status_code == 403
        client = QdrantClient(url=server.url, api_key=SECRET, timeout=60)
        params = models.VectorParams(size=1024, distance=models.Distance.COSINE,
                                     multivector_config=models.MultiVectorConfig(
                                         comparator=models.MultiVectorComparator.MAX_SIM))  # fmt: skip
        client.create_collection("big", vectors_config={"v": params})
        huge = [[0.5] * 1024] * 1100  # 1,126,400 floats in one multivector
        with pytest.raises(UnexpectedResponse) as too_many:
            client.upsert("big", [models.PointStruct(id=1, vector={"v": huge})])
        assert too_many.value.status_code == 422
        bodies = [
            models.PointStruct(id=i, vector={"v": [[0.1234567890123] * 1024] * 300})
            for i in range(8)
        ]
        with pytest.raises(UnexpectedResponse) as too_large:  # ~40 MB of JSON
            client.upsert("big", bodies)
        assert too_large.value.status_code == 400
        assert "larger than allowed" in str(too_large.value.content)
        client.close()


def test_the_writer_keeps_requests_under_the_servers_body_limit():
    """ColPali-sized pages (1030 x 128) in batches of 64 would be ~170 MB of JSON: the writer
    cuts them by size, and the server never sees a request over its 32 MiB limit."""
    from colray.points import BlockWriter
    from test_reliability import embedded_block

    with QdrantStandIn() as server:
        cfg = SinkConfig(kind="qdrant", url=server.url, collection="pages", batch_size=64,
                         **FAST_RETRIES)  # fmt: skip
        layout = [VectorSpec("text", 24)]
        sink = QdrantSink(cfg, layout)
        sink.prepare()
        writer = BlockWriter(sink, cfg, layout, ["title"], "test")
        rng = np.random.default_rng(0)
        keys = [f"page-{i}" for i in range(24)]
        outcome = writer.write(embedded_block(keys, rng, sizes=[5500] * 24))  # 132k floats each
        sink.close()
        assert outcome.points_written == 24 and outcome.dead_letters == []
        upserts = [r for r in server.requests if r.method == "PUT" and r.path.endswith("/points")]
        assert len(upserts) > 1 and max(r.body_bytes for r in upserts) < MAX_BODY_BYTES
        assert 400 not in server.status_counts()


@pytest.mark.slow
def test_a_job_publishes_the_servers_indexing_progress_for_status(
    tmp_path, small_corpus, onnx_cache, monkeypatch
):
    """What `colray status` shows of a running job comes from what the job publishes: while
    the server indexes, the phase is `indexing`, with the server's status and queue. Run in
    this process (the ledger publishes it, on Ray or not), which also writes a server sink
    from the driver."""
    from colray.cluster import describe_progress

    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")
    seen: list[dict] = []
    with QdrantStandIn(api_key=SECRET, yellow_for_s=7.0) as server:
        monkeypatch.setenv("COLRAY_TEST_RAY_ADDRESS", "-")  # text_job's; a local job has none
        config = yaml.safe_load(text_job(tmp_path, small_corpus, onnx_cache, server).read_text())
        config["run"].pop("ray_address")
        monkeypatch.setenv("COLRAY_SINK__API_KEY", SECRET)
        report = colray.ingest(config, on_progress=seen.append)
    assert report.executor == "local" and report.points_in_store == 60
    assert [p["phase"] for p in seen][:1] == ["preparing"] and seen[-1]["phase"] == "done"
    indexing = [p for p in seen if p["phase"] == "indexing" and p.get("indexing")]
    assert indexing, [p["phase"] for p in seen]
    during = indexing[0]
    assert during["indexing"]["status"] == "yellow" and during["rows_done"] == 60
    shown = describe_progress(during)
    assert shown.startswith("indexing: 60 of 60 rows done (100%)")
    assert "server yellow" in shown and "points queued" in shown
    assert_no_secret(json.dumps(seen))


def test_a_wrong_api_key_is_one_line_naming_where_the_key_comes_from(
    tmp_path, small_corpus, onnx_cache, capsys, monkeypatch
):
    from colray.cli import main

    with QdrantStandIn(api_key=SECRET) as server:
        monkeypatch.setenv("COLRAY_TEST_RAY_ADDRESS", "-")
        config = yaml.safe_load(text_job(tmp_path, small_corpus, onnx_cache, server).read_text())
        config["run"].pop("ray_address")
        config["run"]["executor"] = "local"  # refused before any work: no Ray needed
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("COLRAY_SINK__API_KEY", "not-the-key")
        for command in (["ingest"], ["query", "zip archives"]):
            assert main([command[0], "-c", str(tmp_path / "job.yaml"), *command[1:]]) == 2
            (line,) = [line for line in capsys.readouterr().err.splitlines() if line]
            assert f"the server at {server.url} refused the API key (403: Invalid API key" in line
            assert "COLRAY_SINK__API_KEY or sink.api_key_file" in line
            assert "not-the-key" not in line
        assert server.status_counts()[403] >= 2 and server.errors == []


@pytest.mark.slow
def test_float16_and_the_two_stage_query_over_http(
    tmp_path, small_corpus, module_docs, onnx_cache, monkeypatch
):
    """What a server gets asked: collections whose vectors are float16 when the job says so
    (the MUVERA vector with HNSW, the token vectors rerank-only), and queries that prefetch on
    MUVERA and rerank by MaxSim in one request. In-process: the driver writes the server."""
    monkeypatch.setenv("COLRAY_TEST_RAY_ADDRESS", "-")
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")
    monkeypatch.setenv("COLRAY_SINK__API_KEY", SECRET)
    with QdrantStandIn(api_key=SECRET) as server:
        config = yaml.safe_load(text_job(tmp_path, small_corpus, onnx_cache, server).read_text())
        config["run"].pop("ray_address")
        config["embed"].update(datatype="float16", prefetch_limit=20)
        report = colray.ingest(config)
        assert report.points_in_store == 60
        created = [json.loads(b) for b in server.bodies if b.startswith(b'{"vectors"')]
        assert created, "no collection was created"
        vectors = created[0]["vectors"]
        assert {v["datatype"] for v in vectors.values()} == {"float16"}, vectors
        assert vectors["text"]["hnsw_config"]["m"] == 0 and "multivector_config" in vectors["text"]
        assert "multivector_config" not in vectors["text_muvera"]
        server.bodies.clear()
        doc = max(module_docs[:60], key=lambda d: len(d["text"]))
        hits = colray.search(config, " ".join(doc["text"].split()[:12]), limit=3)
        assert hits[0].payload["title"] == doc["title"]
        (query,) = [json.loads(b) for b in server.bodies if b"prefetch" in b]
        (prefetch,) = query["prefetch"]
        assert prefetch["using"] == "text_muvera" and prefetch["limit"] == 20
        assert query["using"] == "text" and query["limit"] == 3
