"""`colray.MultivectorDatasink`: a Ray Dataset of precomputed multivectors written through colray's
writer into a Qdrant server (the REST stand-in, over real HTTP) and into local stores."""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
from qdrant_client import QdrantClient

import colray
from colray.config import SinkConfig
from colray.layout import VectorSpec
from colray.rows import point_id
from colray.sink import open_sink
from qdrant_standin import QdrantStandIn

VECTORS = {"text": 8, "summary": 4}
GOOD = 23


def rows(seed: int = 0) -> list[dict]:
    """Good rows (ragged numpy matrices and lists of lists) and one of each bad kind."""
    rng = np.random.default_rng(seed)
    good = [
        {
            "doc": f"doc-{i}",
            "title": f"title {i}",
            "text": rng.normal(size=(1 + i % 6, 8)).astype(np.float32),
            "summary": rng.normal(size=(2, 4)).astype(np.float32).tolist(),
        }
        for i in range(GOOD)
    ]
    nan = rng.normal(size=(3, 8)).astype(np.float32)
    nan[1, 2] = np.nan
    bad = [
        {"doc": "bad-nan", "title": "t", "text": nan, "summary": [[0.0] * 4]},
        {"doc": "bad-dim", "title": "t", "text": np.ones((2, 8), np.float32),
         "summary": [[1.0, 2.0, 3.0]]},
        {"doc": "bad-empty", "title": "t", "text": np.zeros((0, 8), np.float32),
         "summary": [[0.0] * 4]},
        {"doc": None, "title": "no key", "text": np.ones((2, 8), np.float32),
         "summary": [[0.0] * 4]},
    ]  # fmt: skip
    return good + bad


EXPECTED_DEAD = {
    "bad-nan": ("read", "BadVector", "NaN"),
    "bad-dim": ("read", "BadVector", "expected (n, 4)"),
    "bad-empty": ("read", "BadVector", "no vectors"),
    "None": ("read", "NullId", "null"),
}


def assert_outcome(sink: colray.MultivectorDatasink, dead_path) -> None:
    outcome = sink.outcome
    assert isinstance(outcome, colray.WriteOutcome)
    assert outcome.rows == GOOD + 4 and outcome.points_written == GOOD
    dead = {d["row_key"]: d for d in outcome.dead_letters}
    assert set(dead) == set(EXPECTED_DEAD)
    for key, (stage, error_class, words) in EXPECTED_DEAD.items():
        assert (dead[key]["stage"], dead[key]["error_class"]) == (stage, error_class)
        assert words in dead[key]["error"], dead[key]
    assert len(pq.read_table(dead_path)) == 4
    assert sink.finalize["status"] == "green" and sink.points_in_store == GOOD


def unit(matrix) -> np.ndarray:
    """Row-normalised: a server stores cosine vectors so (local mode, reopened, does not)."""
    matrix = np.asarray(matrix, np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def assert_stored(points: dict[str, tuple[dict, dict]], source: list[dict]) -> None:
    """Exactly the good rows, each under its id, with its vectors (as cosine stores them)."""
    good = source[:GOOD]
    assert set(points) == {point_id("mine", r["doc"]) for r in good}
    for row in good:
        payload, vectors = points[point_id("mine", row["doc"])]
        assert payload["title"] == row["title"] and payload["_colray"]["key"] == row["doc"]
        for name in VECTORS:
            np.testing.assert_allclose(unit(vectors[name]), unit(row[name]), rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_into_a_qdrant_server_over_http(ray_session, tmp_path):
    source = rows()
    with QdrantStandIn() as server:
        cfg = {"kind": "qdrant", "url": server.url, "collection": "mine", "batch_size": 4,
               "max_request_mb": 0.004}  # fmt: skip
        sink = colray.MultivectorDatasink(
            cfg, VECTORS, key_column="doc", source_name="mine", payload_columns=["title"],
            dead_letter_path=tmp_path / "dead.parquet",
        )  # fmt: skip
        ray_session.data.from_items(source, override_num_blocks=3).write_datasink(sink)
        assert_outcome(sink, tmp_path / "dead.parquet")
        client = QdrantClient(url=server.url)
        records, _ = client.scroll("mine", limit=100, with_payload=True, with_vectors=True)
        points = {
            str(r.id): (r.payload, {k: np.asarray(v, np.float32) for k, v in r.vector.items()})
            for r in records
        }
        assert_stored(points, source)
        info = client.get_collection("mine").config.params.vectors
        assert {name: params.size for name, params in info.items()} == VECTORS
        # Byte-bounded batches: small requests, many of them, none over the bound.
        upserts = [r for r in server.requests if r.method == "PUT" and r.path.endswith("/points")]
        assert len(upserts) > GOOD / 4 and max(r.body_bytes for r in upserts) < 0.004 * 2**20 * 2
        assert server.errors == []

        # Again: the same ids are overwritten, nothing is added.
        again = colray.MultivectorDatasink(cfg, VECTORS, key_column="doc", source_name="mine")
        ray_session.data.from_items(source).write_datasink(again)
        assert again.points_in_store == GOOD and client.count("mine").count == GOOD

        # A collection of another layout is refused before anything is written.
        other = colray.MultivectorDatasink(cfg, {"text": 16}, key_column="doc")
        with pytest.raises(Exception, match="incompatible layout"):
            ray_session.data.from_items(source).write_datasink(other)
        assert client.count("mine").count == GOOD
        client.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["edge", "qdrant-local"])
def test_into_a_local_store_through_one_holder(ray_session, tmp_path, kind):
    source = rows(1)
    cfg = (
        {"kind": "edge", "path": str(tmp_path / "edge")}
        if kind == "edge"
        else {"kind": "qdrant", "path": str(tmp_path / "local"), "collection": "mine"}
    )
    sink = colray.MultivectorDatasink(
        cfg, VECTORS, key_column="doc", source_name="mine", payload_columns=["title"],
        dead_letter_path=tmp_path / "dead.parquet",
    )  # fmt: skip
    # Several write tasks at once: one actor holds the store, so they never contend for it.
    ray_session.data.from_items(source, override_num_blocks=4).write_datasink(sink)
    assert_outcome(sink, tmp_path / "dead.parquet")
    store = open_sink(SinkConfig(**cfg), [VectorSpec(n, d) for n, d in VECTORS.items()])
    store.open_for_reading()  # the holder let go of it
    try:
        points = {h.id: (h.payload, h.vectors) for h in store.retrieve_all(with_vectors=True)}
    finally:
        store.close()
    assert_stored(points, source)


@pytest.mark.slow
def test_point_ids_as_given(ray_session, tmp_path):
    """UUIDs and unsigned integers are used as they are; anything else is a dead letter."""
    cfg = {"kind": "edge", "path": str(tmp_path / "edge")}
    given = str(uuid.uuid4())
    outcomes = []
    for ids in ([given, "not-an-id"], [7, 123456789]):
        sink = colray.MultivectorDatasink(cfg, {"text": 8}, id_column="id")
        items = [{"id": i, "text": np.ones((2, 8), np.float32)} for i in ids]
        ray_session.data.from_items(items).write_datasink(sink)
        outcomes.append(sink.outcome)
    assert [o.points_written for o in outcomes] == [1, 2]
    (dead,) = outcomes[0].dead_letters
    assert dead["error_class"] == "InvalidId" and "not-an-id" in dead["error"]
    store = open_sink(SinkConfig(**cfg), [VectorSpec("text", 8)])
    store.open_for_reading()
    stored = {h.id for h in store.retrieve_all(with_vectors=False)}
    store.close()
    assert stored == {given, "7", "123456789"}
