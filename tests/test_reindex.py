"""Rebuilds behind an alias (qdrant-client local mode) and a pointer (Qdrant Edge) while readers
query, retention of old versions, and incremental re-indexing that changes exactly what changed.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from qdrant_client import QdrantClient

import colray
from colray.config import Settings, load_settings
from colray.demo import write_corpus
from colray.embed import load_embedder
from colray.layout import QueryPlan, text_layout
from colray.sink import open_sink, open_versions

ROWS = 30


def make_settings(tmp_path: Path, corpus: Path, sink: dict, onnx_cache: str) -> Settings:
    return load_settings(
        None,
        base={
            # One name for every edition of the corpus: the point ids stay those of the rows.
            "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                       "payload_columns": ["title"], "rows_per_block": 10, "name": "docs"},
            "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 10},
            "sink": {**sink, "keep_versions": 2},
            "run": {"dir": str(tmp_path / "runs"), "progress": False},
        },
    )  # fmt: skip


def edition(rows: list[dict[str, str]], tmp_path: Path, name: str) -> Path:
    return write_corpus(rows, tmp_path / name, rows_per_file=12)


class Reader(threading.Thread):
    """Queries the stable name without pause, recording what each query saw."""

    def __init__(self, query: Any):
        super().__init__(daemon=True)
        self.query = query
        self.stop = threading.Event()
        self.seen: list[tuple[int, int, frozenset[str]]] = []  # (count, hits, edition tags)
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.seen.append(self.query())
            except BaseException as exc:  # every failure is a finding
                self.errors.append(exc)
            time.sleep(0.005)


def tags(payloads: list[dict]) -> frozenset[str]:
    return frozenset(p["title"].rsplit(" @", 1)[1] for p in payloads)


def tagged(rows: list[dict[str, str]], tag: str) -> list[dict[str, str]]:
    """Each edition's titles carry its tag, so a reader can tell which one answered."""
    return [{**r, "title": f"{r['title']} @{tag}"} for r in rows]


def rebuild_while_reading(
    tmp_path: Path, module_docs, onnx_cache: str, sink: dict, query_fn: Any, client: Any = None
) -> tuple[Reader, list[Any], Settings]:
    rows = module_docs[:ROWS]
    first = make_settings(tmp_path, edition(tagged(rows, "e0"), tmp_path, "e0"), sink, onnx_cache)
    reports = [colray.reindex(first, client=client)]
    reader = Reader(lambda: query_fn(first))
    reader.start()
    try:
        for n in (1, 2, 3):
            corpus = edition(tagged(rows, f"e{n}"), tmp_path, f"e{n}")
            settings = first.model_copy(
                update={"source": first.source.model_copy(update={"path": str(corpus)})}
            )
            reports.append(colray.reindex(settings, client=client))
            time.sleep(0.2)  # queries on this edition before the next rebuild
    finally:
        reader.stop.set()
        reader.join(30)
    return reader, reports, first


def assert_readers_never_saw_a_gap(reader: Reader, reports: list[Any]) -> None:
    assert reader.errors == [], reader.errors[:3]
    assert len(reader.seen) >= 20  # the reader really ran alongside the rebuilds
    for count, hits, seen_tags in reader.seen:
        assert count == ROWS and hits == 5  # complete every time, never empty or partial
        assert len(seen_tags) == 1  # one edition per answer, never a mix
    order = [next(iter(t)) for _, _, t in reader.seen]
    assert order == sorted(order)  # editions only move forward
    assert order[-1] == "e3" and len(set(order)) >= 3
    assert [r.reindex["mode"] for r in reports] == ["rebuild"] * 4
    versions = [r.reindex["version"] for r in reports]
    assert versions == sorted(versions) and len(set(versions)) == 4
    assert [r.reindex["previous"] for r in reports] == [None, *versions[:-1]]
    assert reports[2].reindex["dropped"] == [versions[0]]
    assert reports[3].reindex["dropped"] == [versions[1]]


# The same alias swap runs over HTTP in the default suite (test_server.py); local mode is the
# same QdrantSink code on another transport, so it runs with `make test-all`.


@pytest.fixture
def in_process(monkeypatch):
    """These tests are of versions, pointers and incremental changes, the same whichever executor embeds the rows: every stage
    runs in this process (run.executor=local), which keeps Ray's start-up out of them; the
    Ray path is tested elsewhere (test_pipeline, test_reliability, test_server, ...)."""
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")


@pytest.mark.e2e
def test_alias_rebuilds_never_show_readers_a_partial_collection(
    ray_session, tmp_path, module_docs, onnx_cache
):
    # Local mode allows one client per directory: the rebuilds and the reader share it.
    client = QdrantClient(path=str(tmp_path / "qdrant"))
    sink = {"kind": "qdrant", "path": str(tmp_path / "qdrant"), "collection": "docs"}
    query_vector = None

    def query(settings: Settings) -> tuple[int, int, frozenset[str]]:
        nonlocal query_vector
        if query_vector is None:
            query_vector = load_embedder(settings.embed).embed_query("compress files").tolist()
        count = client.count("docs", exact=True).count
        hits = client.query_points(
            "docs", query=query_vector, using="text", limit=5, with_payload=True
        ).points
        return count, len(hits), tags([h.payload for h in hits])

    reader, reports, settings = rebuild_while_reading(
        tmp_path, module_docs, onnx_cache, sink, query, client
    )
    assert_readers_never_saw_a_gap(reader, reports)
    versions = open_versions(settings.sink, client)
    kept = [r.reindex["version"] for r in reports[-2:]]
    assert versions.all() == kept  # retention: the live version and the one before it
    assert versions.live() == kept[-1]
    names = {c.name for c in client.get_collections().collections}
    assert names == {f"docs__{v}" for v in kept}
    client.close()


@pytest.mark.slow
def test_edge_rebuilds_switch_an_atomic_pointer(in_process, tmp_path, module_docs, onnx_cache):
    pointer = tmp_path / "store"
    sink = {"kind": "edge", "path": str(pointer)}
    model: dict[str, Any] = {}

    def query(settings: Settings) -> tuple[int, int, frozenset[str]]:
        if not model:
            embedder = load_embedder(settings.embed)
            model.update(vector=embedder.embed_query("compress files"),
                         layout=text_layout(settings.embed, embedder.dim))  # fmt: skip
        store = open_sink(settings.sink, model["layout"])
        try:  # each query opens the store anew, resolving the pointer as a new reader would
            store.open_for_reading()
            hits = store.query(model["vector"], QueryPlan(using="text"), limit=5)
            return store.count(), len(hits), tags([h.payload for h in hits])
        finally:
            store.close()

    reader, reports, settings = rebuild_while_reading(
        tmp_path, module_docs, onnx_cache, sink, query
    )
    assert_readers_never_saw_a_gap(reader, reports)
    versions = open_versions(settings.sink)
    kept = [r.reindex["version"] for r in reports[-2:]]
    assert versions.all() == kept
    assert pointer.is_symlink() and pointer.resolve().name == kept[-1]
    assert sorted(p.name for p in (tmp_path / "store.versions").iterdir()) == kept


def snapshot(settings: Settings, client: Any = None) -> dict[str, tuple[str, str, np.ndarray]]:
    """Every point: its title, stored content hash and vectors."""
    embedder = load_embedder(settings.embed)
    store = open_sink(settings.sink, text_layout(settings.embed, embedder.dim), client)
    try:
        store.open_for_reading()
        return {
            h.payload["_colray"]["key"]: (
                h.payload["title"],
                h.payload["_colray"]["hash"],
                h.vectors["text"] if h.vectors else np.empty(0),
            )
            for h in store.retrieve_all(with_vectors=True)
        }
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["qdrant-local", "edge"])
def test_incremental_reindex_changes_exactly_the_edited_added_and_deleted_rows(
    in_process, tmp_path, module_docs, onnx_cache, engine
):
    client = QdrantClient(path=str(tmp_path / "qdrant")) if engine == "qdrant-local" else None
    sink = (
        {"kind": "qdrant", "path": str(tmp_path / "qdrant"), "collection": "docs"}
        if client
        else {"kind": "edge", "path": str(tmp_path / "store")}
    )
    rows = module_docs[:ROWS]
    before_settings = make_settings(tmp_path, edition(rows, tmp_path, "before"), sink, onnx_cache)
    first = colray.reindex(before_settings, client=client)
    assert first.reindex["mode"] == "rebuild"
    before = snapshot(before_settings, client)

    edited = {rows[3]["doc_id"], rows[17]["doc_id"]}
    deleted = {rows[5]["doc_id"], rows[20]["doc_id"]}
    added = module_docs[ROWS : ROWS + 3]
    after_rows = [
        {**r, "text": r["text"] + " Edited."} if r["doc_id"] in edited else r
        for r in rows
        if r["doc_id"] not in deleted
    ] + added
    after_settings = make_settings(
        tmp_path, edition(after_rows, tmp_path, "after"), sink, onnx_cache
    )
    report = colray.reindex(after_settings, incremental=True, client=client)

    assert report.incremental == {"unchanged": ROWS - 4, "updated": 2, "added": 3, "deleted": 2}
    assert report.reindex["mode"] == "incremental"
    assert report.reindex["version"] == first.reindex["version"]  # in place, no new version
    assert report.points_written == 5 and report.points_in_store == ROWS + 3 - 2
    after = snapshot(after_settings, client)
    assert set(after) == set(before) - deleted | {r["doc_id"] for r in added}
    for key in set(before) - deleted - edited:  # untouched: same hash, same vectors
        assert after[key][1] == before[key][1]
        np.testing.assert_array_equal(after[key][2], before[key][2])
    for key in edited:  # re-embedded from the new text
        assert after[key][1] != before[key][1]
        assert after[key][2].shape != before[key][2].shape or not np.array_equal(
            after[key][2], before[key][2]
        )
    versions = open_versions(after_settings.sink, client)
    assert versions.all() == [first.reindex["version"]]

    # Nothing changed since: a second incremental run writes and deletes nothing.
    again = colray.reindex(after_settings, incremental=True, client=client)
    assert again.incremental == {"unchanged": ROWS + 1, "updated": 0, "added": 0, "deleted": 0}
    if client is not None:
        client.close()
