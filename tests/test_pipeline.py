"""End to end on Ray with each sink engine: every row accounted for, searches exact, re-runs idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import colray
from colray.config import Settings, load_settings
from colray.embed import load_embedder
from colray.embed.pooling import pool_tokens
from colray.layout import QueryPlan, text_layout
from colray.sink import open_sink

BAD_ROWS = [
    {"doc_id": "bad-null", "title": "null text", "text": None},
    {"doc_id": "bad-empty", "title": "empty text", "text": ""},
    {"doc_id": "bad-blank", "title": "blank text", "text": "   \n\t "},
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, module_docs) -> Path:
    """60 real documents and 3 that cannot be embedded, in three files."""
    rows = module_docs[:60]
    root = tmp_path_factory.mktemp("e2e") / "docs"
    root.mkdir()
    for part, start in enumerate(range(0, 60, 25)):
        pq.write_table(
            pa.Table.from_pylist(rows[start : start + 25]), root / f"part-{part}.parquet"
        )
    schema = pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
    pq.write_table(pa.Table.from_pylist(BAD_ROWS, schema), root / "part-bad.parquet")
    return root


def make_settings(tmp_path: Path, corpus: Path, sink: dict, onnx_cache: str) -> Settings:
    return load_settings(
        None,
        base={
            "source": {
                "path": str(corpus),
                "text_column": "text",
                "id_column": "doc_id",
                "payload_columns": ["title"],
                "rows_per_block": 16,
            },
            "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 16},
            "sink": sink,
            "run": {"dir": str(tmp_path / "runs"), "progress": False, "max_failed_fraction": 0.5},
        },
    )


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    d = doc / np.linalg.norm(doc, axis=1, keepdims=True)
    return float((q @ d.T).max(axis=1).sum())


SINKS = {
    "edge": lambda tmp: {"kind": "edge", "path": str(tmp / "edge-store")},
    "qdrant-local": lambda tmp: {
        "kind": "qdrant",
        "path": str(tmp / "qdrant-local"),
        "collection": "docs",
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(SINKS))
def test_ingest_query_and_rerun(
    engine, ray_session, corpus, module_docs, tmp_path, onnx_cache
) -> None:
    settings = make_settings(tmp_path, corpus, SINKS[engine](tmp_path), onnx_cache)
    report = colray.ingest(settings, report_path=tmp_path / "report.json")

    assert report.rows_in_source == report.rows_read == 63
    assert report.points_written == 60 and report.points_in_store == 60
    assert report.dead_lettered == 3
    assert (
        report.rows_read == report.points_written + report.dead_lettered + report.skipped_existing
    )
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["points_written"] == 60 and saved["duration_s"] > 0
    assert {"embed", "write", "finalize"} <= set(saved["stages_s"])
    dead = pq.read_table(report.dead_letter_path).to_pylist()
    assert sorted(d["row_key"] for d in dead) == sorted(r["doc_id"] for r in BAD_ROWS)
    assert {d["stage"] for d in dead} == {"embed"}
    assert {d["error_class"] for d in dead} == {"NullText", "EmptyText"}
    assert {d["error"] for d in dead} == {"text is null", "text is empty or only whitespace"}
    assert all(d["source_location"].startswith("part-bad.parquet#") for d in dead)

    embedder = load_embedder(settings.embed)
    sink = open_sink(settings.sink, text_layout(settings.embed, embedder.dim))
    sink.open_for_reading()
    try:
        stored = sink.retrieve_all(with_vectors=True)
        assert len(stored) == 60
        longest = sorted(module_docs[:60], key=lambda d: -len(d["text"]))[:5]
        for doc in longest:
            query = embedder.embed_query(" ".join(doc["text"].split()[:15]))
            hits = sink.query(query, QueryPlan("text"), limit=5)
            assert hits[0].payload["title"] == doc["title"]  # known item comes first
            brute = sorted(
                ((maxsim(query, p.vectors["text"]), p.id) for p in stored), reverse=True
            )[:5]
            assert [h.id for h in hits] == [pid for _, pid in brute]
            np.testing.assert_allclose([h.score for h in hits], [s for s, _ in brute], atol=1e-4)
    finally:
        sink.close()

    again = colray.ingest(settings)
    assert again.points_in_store == 60  # the same ids were overwritten, nothing added
    assert again.points_written == 60 and again.dead_lettered == 3


@pytest.mark.slow
def test_pool_factor_stores_the_pooled_vectors(
    ray_session, corpus, module_docs, tmp_path, onnx_cache
) -> None:
    settings = make_settings(tmp_path, corpus, SINKS["edge"](tmp_path), onnx_cache)
    settings.embed.pool_factor = 3
    report = colray.ingest(settings)
    assert report.points_written == 60 and report.dead_lettered == 3

    embedder = load_embedder(settings.embed)
    sink = open_sink(settings.sink, text_layout(settings.embed, embedder.dim))
    sink.open_for_reading()
    try:
        stored = {
            p.payload["title"]: p.vectors["text"] for p in sink.retrieve_all(with_vectors=True)
        }
        assert len(stored) == 60  # titles are unique in this corpus
        full_total = pooled_total = 0
        for doc in module_docs[:60]:
            full = embedder.embed_documents([doc["text"]])[0]
            expected = pool_tokens(full, 3)
            np.testing.assert_allclose(stored[doc["title"]], expected, atol=1e-5)
            full_total, pooled_total = full_total + len(full), pooled_total + len(expected)
        assert pooled_total <= full_total / 2.5  # about a third of the vectors are stored
        doc = max(module_docs[:60], key=lambda d: len(d["text"]))
        query = embedder.embed_query(" ".join(doc["text"].split()[:15]))
        assert sink.query(query, QueryPlan("text"), limit=3)[0].payload["title"] == doc["title"]
    finally:
        sink.close()


def test_report_describes_the_sink_without_credentials() -> None:
    from colray.config import SinkConfig

    cfg = SinkConfig(kind="qdrant", url="https://user:s3cret@q.example.com:6333/?api-key=s3cret")
    described = cfg.describe()
    assert described["where"] == "https://q.example.com:6333/"
    assert "s3cret" not in str(described)
