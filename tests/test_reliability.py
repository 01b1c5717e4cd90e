"""Reliability: injected server faults, non-transient rejections, size-bounded batches, a
killed embedder, a killed driver, hostile input and secrets."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from qdrant_client import QdrantClient
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

import colray
from colray.config import SinkConfig, load_settings
from colray.layout import VectorSpec
from colray.points import MAX_FLOATS_PER_MULTIVECTOR, BlockWriter
from colray.rows import ERROR, HASH, ID, KEY, LOCATION, count_column, point_id, vectors_column
from colray.sink.qdrant import QdrantSink, is_transient, retry_after
from faults import FlakyClient, kill_midway_then_rerun

DIM = 24
LAYOUT = [VectorSpec("text", DIM)]


class RejectingClient:
    """Refuses some points the way a server does: 422 (too large), 400 (bad payload)."""

    def __init__(self, inner: QdrantClient, too_large: set[str], bad_payload: set[str]):
        self.inner = inner
        self.too_large = too_large
        self.bad_payload = bad_payload
        self.upserted: list[list[str]] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def upsert(self, collection_name, points, **kwargs):
        ids = [str(p.id) for p in points]
        if self.too_large & set(ids):
            raise UnexpectedResponse(
                422, "Unprocessable Entity", b'{"status":{"error":"too large"}}', httpx.Headers()
            )
        if self.bad_payload & set(ids):
            raise UnexpectedResponse(
                400, "Bad Request", b'{"status":{"error":"bad payload"}}', httpx.Headers()
            )
        self.upserted.append(ids)
        return self.inner.upsert(collection_name, points, **kwargs)


def sink_config(**overrides) -> SinkConfig:
    base = {"kind": "qdrant", "path": "/unused", "retry_attempts": 30, "retry_timeout_s": 60,
            "retry_wait_initial_s": 0.001, "retry_wait_max_s": 0.01, "batch_size": 8}  # fmt: skip
    return SinkConfig(**{**base, **overrides})


def embedded_block(
    keys: list[str], rng: np.random.Generator, sizes: list[int] | None = None
) -> pa.Table:
    """A block as the embed stage hands it to a writer."""
    sizes = sizes or [int(rng.integers(3, 12)) for _ in keys]
    vectors = [rng.normal(size=(n, DIM)).astype(np.float32) for n in sizes]
    return pa.table(
        {
            "title": [f"title {k}" for k in keys],
            ID: [point_id("test", k) for k in keys],
            KEY: keys,
            LOCATION: [f"f.parquet#{i}" for i in range(len(keys))],
            ERROR: pa.array([None] * len(keys), pa.string()),
            HASH: [f"hash-{k}" for k in keys],
            vectors_column("text"): [v.tobytes() for v in vectors],
            count_column("text"): pa.array([len(v) for v in vectors], pa.int32()),
        }
    )


def writer_for(client, cfg: SinkConfig) -> tuple[BlockWriter, QdrantSink]:
    sink = QdrantSink(cfg, LAYOUT, client=client)
    sink.prepare()
    return BlockWriter(sink, cfg, LAYOUT, ["title"], "test"), sink


def test_thirty_percent_failing_calls_still_write_every_row_exactly_once():
    client = FlakyClient(QdrantClient(":memory:"), rate=0.3, seed=7)
    writer, sink = writer_for(client, sink_config())
    rng = np.random.default_rng(0)
    keys = [f"doc-{i}" for i in range(200)]
    written = 0
    for start in range(0, 200, 20):
        outcome = writer.write(embedded_block(keys[start : start + 20], rng))
        assert outcome.dead_letters == []
        written += outcome.points_written
    sink.finalize()
    assert written == 200
    assert client.failures > 20  # the faults really happened, before and after applying
    assert sink.count() == 200
    stored = sorted(h.payload["_colray"]["key"] for h in sink.retrieve_all(with_vectors=False))
    assert stored == sorted(keys)


JOB_WITH_FAULTS = """
import json, sys
import ray
import colray

from qdrant_client import QdrantClient
from faults import FlakyClient

address, config, out, store = sys.argv[1:5]
ray.init(address=address)
# A local-mode store is written by the driver, which holds its directory lock.
client = FlakyClient(QdrantClient(path=store), rate=float(__import__("os").environ["COLRAY_TEST_FAULT_RATE"]))
report = colray.ingest(config, client=client)
open(out, "w").write(report.to_json())
"""


def test_a_job_with_thirty_percent_failing_server_calls_loses_and_duplicates_nothing(
    ray_session, tmp_path, small_corpus, onnx_cache
):
    """The whole job on Ray, every call of its QdrantClient (the driver writes a local-mode
    store) failing 30% of the time."""
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "source": {"path": str(small_corpus), "text_column": "text", "id_column": "doc_id", "rows_per_block": 8},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8},
        "sink": {"kind": "qdrant", "path": str(tmp_path / "store"), "batch_size": 2, "retry_attempts": 30,
                 "retry_wait_initial_s": 0.001, "retry_wait_max_s": 0.01},
        "run": {"dir": str(tmp_path / "runs"), "progress": False},
    }))  # fmt: skip
    fault_log = tmp_path / "faults.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "COLRAY_TEST_FAULT_RATE": "0.3",
           "COLRAY_TEST_FAULT_LOG": str(fault_log)}  # fmt: skip
    out = tmp_path / "report.json"
    address = ray_session.get_runtime_context().gcs_address
    run = subprocess.run(
        [sys.executable, "-c", JOB_WITH_FAULTS, address, str(config), str(out), str(tmp_path / "store")],
        env=env, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    faults = fault_log.read_text().split("\n")
    assert sum(1 for f in faults if f) >= 6
    assert any(f.startswith("upsert") and f.endswith("after") for f in faults)  # applied, "failed"
    assert any(f.startswith("upsert") and f.endswith("before") for f in faults)
    assert report["rows_read"] == report["points_written"] == 60
    store = QdrantClient(path=str(tmp_path / "store"))
    records, _ = store.scroll("colray", limit=1000, with_payload=True)
    store.close()
    keys = [r.payload["_colray"]["key"] for r in records]
    assert len(keys) == len(set(keys)) == 60  # every row present exactly once


def test_non_transient_rejections_dead_letter_only_the_bad_rows():
    keys = [f"doc-{i}" for i in range(30)]
    too_large, bad_payload = (
        {point_id("test", "doc-3"), point_id("test", "doc-17")},
        {point_id("test", "doc-25")},
    )
    client = RejectingClient(QdrantClient(":memory:"), too_large, bad_payload)
    writer, sink = writer_for(client, sink_config())
    outcome = writer.write(embedded_block(keys, np.random.default_rng(1)))
    dead = {d["row_key"]: d for d in outcome.dead_letters}
    assert set(dead) == {"doc-3", "doc-17", "doc-25"}
    assert {d["stage"] for d in dead.values()} == {"write"}
    assert {d["error_class"] for d in dead.values()} == {"UnexpectedResponse"}
    assert "422" in dead["doc-3"]["error"] and "400" in dead["doc-25"]["error"]
    assert outcome.points_written == 27 and sink.count() == 27


def test_a_multivector_over_qdrants_float_limit_is_dead_lettered_unsent():
    rows = MAX_FLOATS_PER_MULTIVECTOR // DIM + 1
    client = RejectingClient(QdrantClient(":memory:"), set(), set())
    writer, sink = writer_for(client, sink_config())
    outcome = writer.write(
        embedded_block(["small", "huge"], np.random.default_rng(2), sizes=[5, rows])
    )
    assert [(d["row_key"], d["error_class"]) for d in outcome.dead_letters] == [
        ("huge", "MultivectorTooLarge")
    ]
    assert point_id("test", "huge") not in {i for ids in client.upserted for i in ids}
    assert sink.count() == 1


def test_batches_are_cut_by_serialized_size():
    limit_mb = 0.05
    client = RejectingClient(QdrantClient(":memory:"), set(), set())
    sent_bytes: list[int] = []
    upsert = client.upsert

    def measuring_upsert(collection_name, points, **kwargs):
        sent_bytes.append(len(json.dumps([p.model_dump(mode="json") for p in points])))
        return upsert(collection_name, points, **kwargs)

    client.upsert = measuring_upsert
    writer, sink = writer_for(client, sink_config(max_request_mb=limit_mb, batch_size=1000))
    keys = [f"doc-{i}" for i in range(40)]
    outcome = writer.write(embedded_block(keys, np.random.default_rng(3), sizes=[40] * 40))
    assert outcome.points_written == 40 and sink.count() == 40
    assert len(sent_bytes) > 1  # one 1000-point batch by count, several by size
    assert max(sent_bytes) <= limit_mb * 2**20  # the estimate bounds the real JSON


def test_retry_policy_follows_the_server():
    assert retry_after(ResourceExhaustedResponse("slow", "3")) == 3.0
    assert retry_after(UnexpectedResponse(503, "", b"", httpx.Headers({"Retry-After": "2"}))) == 2.0
    assert retry_after(UnexpectedResponse(502, "", b"", httpx.Headers())) is True
    for status in (400, 401, 403, 404, 422):
        assert retry_after(UnexpectedResponse(status, "", b"", httpx.Headers())) is False
    from pydantic import BaseModel, ValidationError

    class Shape(BaseModel):
        x: int

    try:
        Shape(x="not a number")
    except ValidationError as exc:
        assert not is_transient(ResponseHandlingException(exc))
    assert is_transient(ResponseHandlingException(httpx.ConnectError("refused")))


# --- on Ray ------------------------------------------------------------------------------


def text_settings(tmp_path: Path, corpus: Path, onnx_cache: str, **run):
    return load_settings(
        None,
        base={
            "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                       "payload_columns": ["title"], "rows_per_block": 8},
            "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8},
            "sink": {"kind": "edge", "path": str(tmp_path / "store")},
            "run": {"dir": str(tmp_path / "runs"), "progress": False, **run},
        },
    )  # fmt: skip


def _embedder_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "EmbedStage" in cmdline and "MapWorker" in cmdline:
            found.append(proc)
    return found


def test_a_killed_embedder_actor_is_replaced_and_no_row_is_lost(
    ray_session, tmp_path, small_corpus, onnx_cache
):
    settings = text_settings(tmp_path, small_corpus, onnx_cache)
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(report=colray.ingest(settings)))
    job.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and job.is_alive():
        for proc in _embedder_processes():
            if proc.cpu_times().user > 3:  # model loaded and embedding
                proc.send_signal(signal.SIGKILL)
                killed = proc.pid
                break
        time.sleep(0.2)
    replacement = None
    while job.is_alive() and replacement is None:  # Ray restarts the actor to finish the work
        replacement = next((p.pid for p in _embedder_processes() if p.pid != killed), None)
        time.sleep(0.1)
    job.join(timeout=300)
    assert killed is not None, "the embedder was never seen working"
    assert replacement is not None, "the kill came after the work was done"
    report = result["report"]
    assert report.rows_read == report.points_written == report.points_in_store == 60


def test_an_embedder_that_cannot_be_restarted_ends_the_run_cleanly_and_resumes(
    ray_session, tmp_path, module_docs, tiny_colbert
):
    """The model goes from the embedder's machine mid-run (a wiped cache, a lost disk) and the
    embedder is killed: Ray cannot restart it. The run ends with one `colray:` line, exit 1
    and a report of what was done; once the model is back, the same job finishes the rest,
    every row once."""
    from colray.demo import write_corpus

    model = Path(shutil.copytree(tiny_colbert.directory, tmp_path / "model"))
    rows = [{**r, "doc_id": f"{r['doc_id']}-{n}"} for n in range(4) for r in module_docs[:120]]
    corpus = write_corpus(rows, tmp_path / "docs", rows_per_file=60)
    config = tmp_path / "job.yaml"
    config.write_text(
        json.dumps(
            {
                "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id", "rows_per_block": 4},
                "embed": {"model": str(model), "rows_per_call": 4},
                "sink": {"kind": "edge", "path": str(tmp_path / "store")},
                "run": {"dir": str(tmp_path / "runs"), "progress": False, "executor": "ray",
                        "ray_address": ray_session.get_runtime_context().gcs_address},
            }
        )
    )  # fmt: skip
    command = [sys.executable, "-m", "colray.cli", "ingest", "--config", str(config)]
    first = subprocess.Popen([*command, "--report", str(tmp_path / "first.json")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        logs = list((tmp_path / "runs").glob("resume/*/done.log"))
        if logs and len(logs[0].read_text().splitlines()) >= 8:
            break
        time.sleep(0.1)
    assert first.poll() is None, "the run ended before its embedder could be taken away"
    hidden = model.rename(tmp_path / "model-elsewhere")
    embedders = _embedder_processes()
    assert embedders, "no embedder actor found to kill"
    for proc in embedders:
        proc.send_signal(signal.SIGKILL)
    _, stderr = first.communicate(timeout=300)

    assert first.returncode == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    said = [line for line in stderr.splitlines() if line.startswith("colray:")]
    assert len(said) == 1 and "a Ray worker of the job failed" in said[0], stderr[-3000:]
    report = json.loads((tmp_path / "first.json").read_text())
    assert report["outcome"] == "failed"
    assert 8 <= report["points_written"] < len(rows)

    hidden.rename(model)
    second = subprocess.run([*command, "--report", str(tmp_path / "second.json")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp_path / "second.json").read_text())
    assert again["skipped_existing"] >= report["points_written"]
    assert again["points_written"] + again["skipped_existing"] == len(rows)
    assert again["points_in_store"] == len(rows)  # every row once, none twice


def test_a_killed_driver_resumes_without_redoing_or_duplicating(
    ray_session, tmp_path, module_docs, onnx_cache
):
    from colray.demo import write_corpus

    corpus = write_corpus(module_docs[:160], tmp_path / "docs", rows_per_file=40)
    config = tmp_path / "job.yaml"
    config.write_text(
        json.dumps(
            {
                "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id", "rows_per_block": 8},
                "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8},
                "sink": {"kind": "edge", "path": str(tmp_path / "store")},
                "run": {"dir": str(tmp_path / "runs"), "progress": False,
                        "ray_address": ray_session.get_runtime_context().gcs_address},
            }
        )
    )  # fmt: skip
    report_path = tmp_path / "second.json"
    done_before, second = kill_midway_then_rerun(config, tmp_path / "runs", report_path, 24)
    assert 24 <= done_before < 160
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["rows_read"] == 160
    assert report["skipped_existing"] >= done_before
    assert report["points_written"] + report["skipped_existing"] + report["dead_lettered"] == 160
    assert report["points_in_store"] == 160  # every row once, none twice
    assert not list((tmp_path / "runs").glob("resume/*/done.log"))  # a finished job clears it


@pytest.mark.parametrize("executor", ["ray", "local"])
def test_a_generated_hostile_dataset(
    executor, ray_session, tmp_path, module_docs, onnx_cache, monkeypatch
):
    """Every case of hostile input in one dataset: each bad row is a dead letter with its
    reason, each good row a point, and the counts add up; on Ray and in this process."""
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", executor)
    root = tmp_path / "docs"
    root.mkdir()
    good = [dict(r) for r in module_docs[:20]]
    hostile = [
        {"doc_id": "null-text", "title": "t", "text": None},
        {"doc_id": "empty-text", "title": "t", "text": ""},
        {"doc_id": "blank-text", "title": "t", "text": " \n\t "},
        {"doc_id": None, "title": "no id", "text": "a row without an id"},
        {"doc_id": "long", "title": "very long", "text": "word " * 3000},
        {**good[0], "title": "a later copy of the first row"},  # duplicate id
    ]
    pq.write_table(pa.Table.from_pylist(good + hostile), root / "part-0.parquet")
    numbers = {"doc_id": ["int-1", "int-2"], "title": ["n", "n"], "text": [1, 2]}
    pq.write_table(pa.table(numbers), root / "part-1.parquet")  # non-string text values
    (root / "part-2.parquet").write_bytes(b"PAR1 garbage that is not parquet at all")
    settings = text_settings(tmp_path, root, onnx_cache, max_failed_fraction=0.5)
    report = colray.ingest(settings)

    assert report.executor == executor
    assert report.rows_read == 28 and report.unreadable_files == 1
    assert report.points_written == 22 and report.dead_lettered == 6
    assert report.duplicate_ids == 1 and report.points_in_store == 21
    dead = pq.read_table(report.dead_letter_path).to_pylist()
    reasons = {d["row_key"] or d["source_location"]: (d["stage"], d["error_class"]) for d in dead}
    assert reasons == {
        "null-text": ("embed", "NullText"),
        "empty-text": ("embed", "EmptyText"),
        "blank-text": ("embed", "EmptyText"),
        "part-0.parquet#23": ("read", "NullId"),
        "int-1": ("read", "NonStringText"),
        "int-2": ("read", "NonStringText"),
        "part-2.parquet": ("read", "UnreadableFile"),
    }
    from colray.sink import open_sink

    store = open_sink(settings.sink, [VectorSpec("text", 384)])
    store.open_for_reading()
    points = {
        h.payload["_colray"]["key"]: h.payload for h in store.retrieve_all(with_vectors=False)
    }
    store.close()
    assert set(points) == {r["doc_id"] for r in good} | {"long"}
    assert points["long"]["_colray"]["truncated"] is True
    assert points[good[0]["doc_id"]]["title"] == "a later copy of the first row"  # last wins
    short = [r["doc_id"] for r in good if len(r["text"]) < 400]
    assert short and not any(points[k]["_colray"].get("truncated") for k in short)


def test_missing_or_renamed_columns_fail_before_any_work(tmp_path, small_corpus, onnx_cache):
    from colray.config import ConfigError
    from colray.job import prepare_job

    settings = text_settings(tmp_path, small_corpus, onnx_cache)
    renamed = settings.model_copy(
        update={"source": settings.source.model_copy(update={"text_column": "body"})}
    )
    with pytest.raises(ConfigError, match="'body'"):
        prepare_job(renamed)


def test_an_empty_dataset_is_a_clean_run_of_zero(ray_session, tmp_path, onnx_cache):
    root = tmp_path / "empty"
    root.mkdir()
    schema = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
    pq.write_table(schema.empty_table(), root / "part-0.parquet")
    report = colray.ingest(text_settings(tmp_path, root, onnx_cache))
    assert (report.rows_read, report.points_written, report.dead_lettered) == (0, 0, 0)


def test_a_flood_of_failures_exits_3_with_a_summary(
    ray_session, tmp_path, module_docs, onnx_cache, capsys
):
    from colray.cli import main

    root = tmp_path / "docs"
    root.mkdir()
    rows = [dict(r) for r in module_docs[:10]] + [
        {"doc_id": f"blank-{i}", "title": "", "text": " "} for i in range(5)
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "part-0.parquet")
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "source": {"path": str(root), "text_column": "text", "id_column": "doc_id"},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs"), "progress": False, "max_failed_fraction": 0.2},
    }))  # fmt: skip
    assert main(["ingest", "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "5 of 15 rows were dead-lettered" in err and "embed: EmptyText (5)" in err


# --- secrets ------------------------------------------------------------------------------


def test_api_key_never_shows_and_plain_http_warns(
    ray_session, tmp_path, small_corpus, onnx_cache, monkeypatch, capsys, caplog
):
    from colray.cli import main

    secret = "s3cr3t-key-that-must-not-leak"
    monkeypatch.setenv("COLRAY_SINK__API_KEY", secret)
    with caplog.at_level(logging.WARNING, logger="colray"):
        QdrantSink(
            SinkConfig(kind="qdrant", url="http://qdrant.example.com:6333", api_key=secret), LAYOUT
        )
    assert "plain http" in caplog.text and secret not in caplog.text
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "source": {"path": str(small_corpus), "text_column": "text", "id_column": "doc_id"},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache},
        "sink": {"kind": "qdrant", "url": "http://127.0.0.1:9", "retry_attempts": 1, "timeout_s": 2},
        "run": {"dir": str(tmp_path / "runs"), "progress": False},
    }))  # fmt: skip
    code = main(["ingest", "--config", str(config)])
    out = capsys.readouterr()
    assert code == 2 and "cannot open the sink" in out.err
    assert secret not in out.out + out.err + caplog.text
    for path in (tmp_path / "runs").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes()


def test_resume_identity_ignores_compute_settings(tmp_path, small_corpus, onnx_cache):
    from colray.job import job_fingerprint

    settings = text_settings(tmp_path, small_corpus, onnx_cache)
    more_actors = settings.model_copy(
        update={"embed": settings.embed.model_copy(update={"num_actors": 4, "batch_size": 8})}
    )
    other_model = settings.model_copy(
        update={"embed": settings.embed.model_copy(update={"model": "colbertv2.0"})}
    )
    fingerprint = job_fingerprint(settings, LAYOUT, ["a.parquet"])
    assert job_fingerprint(more_actors, LAYOUT, ["a.parquet"]) == fingerprint
    assert job_fingerprint(other_model, LAYOUT, ["a.parquet"]) != fingerprint
    assert job_fingerprint(settings, LAYOUT, ["a.parquet", "b.parquet"]) != fingerprint
