"""The sink contract on both real engines, without Ray: layout, idempotent writes, finalize."""

from __future__ import annotations

import datetime as dt
import decimal

import httpx
import numpy as np
import pytest
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from colray.config import SinkConfig
from colray.layout import QueryPlan, VectorSpec
from colray.rows import point_id
from colray.sink import Point, SinkError, json_safe, open_sink
from colray.sink.qdrant import is_transient

LAYOUT = [VectorSpec("text", 8)]


def engine_config(engine: str, tmp_path, **extra) -> SinkConfig:
    if engine == "edge":
        return SinkConfig(kind="edge", path=str(tmp_path / "edge"), **extra)
    return SinkConfig(kind="qdrant", path=str(tmp_path / "local"), collection="c", **extra)


def random_points(n: int, seed: int = 0) -> list[Point]:
    rng = np.random.default_rng(seed)
    return [
        Point(
            point_id("t", str(i)),
            {"text": rng.normal(size=(2 + i % 5, 8)).astype(np.float32)},
            {"i": i},
        )
        for i in range(n)
    ]


@pytest.mark.parametrize("engine", ["edge", "qdrant"])
def test_contract(engine, tmp_path) -> None:
    sink = open_sink(engine_config(engine, tmp_path, indexing_threshold_kb=1), LAYOUT)
    sink.prepare()
    points = random_points(20)
    sink.write(points[:12])
    sink.write(points[8:])  # overlapping ids overwrite
    result = sink.finalize()
    assert result.status == "green"
    assert sink.count() == 20
    query = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)
    hits = sink.query(query, QueryPlan("text"), limit=5)
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)

    def maxsim(doc: np.ndarray) -> float:
        dn = doc / np.linalg.norm(doc, axis=1, keepdims=True)
        return float((qn @ dn.T).max(axis=1).sum())

    expected = sorted(((maxsim(p.vectors["text"]), p.id) for p in points), reverse=True)[:5]
    assert [h.id for h in hits] == [pid for _, pid in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for s, _ in expected], atol=1e-4)
    assert {h.payload["i"] for h in sink.retrieve_all(with_vectors=False)} == set(range(20))
    sink.close()


@pytest.mark.parametrize("engine", ["edge", "qdrant"])
def test_incompatible_layout_is_refused(engine, tmp_path) -> None:
    sink = open_sink(engine_config(engine, tmp_path), LAYOUT)
    sink.prepare()
    sink.write(random_points(2))
    sink.close()
    other = open_sink(engine_config(engine, tmp_path), [VectorSpec("text", 16)])
    with pytest.raises(SinkError, match="incompatible layout"):
        other.prepare()
    other.close()
    renamed = open_sink(engine_config(engine, tmp_path), [VectorSpec("body", 8)])
    with pytest.raises(SinkError, match="incompatible layout"):
        renamed.prepare()
    renamed.close()


def test_transient_errors_are_told_apart() -> None:
    def status(code: int) -> UnexpectedResponse:
        return UnexpectedResponse(code, "x", b"{}", httpx.Headers())

    for code in (408, 429, 500, 502, 503, 504):
        assert is_transient(status(code)), code
    for code in (400, 401, 403, 404, 422):
        assert not is_transient(status(code)), code
    assert is_transient(ResponseHandlingException(httpx.ConnectError("reset")))
    assert is_transient(TimeoutError())
    assert not is_transient(ValueError("bad payload"))


def test_payload_values_become_json() -> None:
    value = {
        "when": dt.datetime(2026, 1, 2, 3, 4, 5),
        "price": decimal.Decimal("1.5"),
        "raw": b"\x00\x01",
        "nan": float("nan"),
        "arr": np.arange(3),
        "n": np.int64(4),
        "nested": [{"d": dt.date(2026, 1, 2)}],
    }
    assert json_safe(value) == {
        "when": "2026-01-02T03:04:05",
        "price": 1.5,
        "raw": "AAE=",
        "nan": None,
        "arr": [0, 1, 2],
        "n": 4,
        "nested": [{"d": "2026-01-02"}],
    }
