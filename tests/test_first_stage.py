"""The text first stage: MUVERA encodings equal to fastembed's, two-stage queries equal to
brute-force MaxSim, float16 storage, and stores of the old layout refused or migrated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastembed.postprocess import Muvera as FastembedMuvera

import colray
from colray.config import ConfigError, load_settings
from colray.embed import load_embedder
from colray.embed.muvera import Muvera, muvera_for
from colray.job import prepare_job
from colray.layout import QueryPlan, text_layout, text_query_plan
from colray.sink import open_sink

PARAMETERS = [
    {},  # fastembed's defaults: 5 / 16 / 20, seed 42
    {"k_sim": 3, "dim_proj": 8, "r_reps": 4, "random_seed": 7},
    {"k_sim": 6, "dim_proj": 32, "r_reps": 20},  # the docs' suggestion: 40,960 dims
    {"k_sim": 4, "dim_proj": 24, "r_reps": 3},  # dim_proj == dim: no projection
]


@pytest.mark.parametrize(
    "params", PARAMETERS, ids=lambda p: "-".join(map(str, p.values())) or "defaults"
)
@pytest.mark.parametrize("tokens", [1, 2, 31, 33, 300])  # one token; fewer and more than buckets
def test_encodings_equal_fastembeds(params, tokens):
    dim = 24 if params.get("dim_proj") == 24 else 96
    rng = np.random.default_rng(tokens)
    vectors = rng.normal(size=(tokens, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    theirs, ours = FastembedMuvera(dim, **params), Muvera(dim, **params)
    assert ours.embedding_size == theirs.embedding_size
    for mine, reference in [
        (ours.encode_document(vectors), theirs.process_document(vectors)),
        (ours.encode_query(vectors), theirs.process_query(vectors)),
    ]:
        assert mine.dtype == np.float32 and mine.shape == (theirs.embedding_size,)
        # fastembed computes in float64; colray's products are float32, its signs exact.
        np.testing.assert_allclose(mine, reference.astype(np.float32), rtol=1e-5, atol=5e-6)


def test_settings_refuse_encodings_qdrant_cannot_store(tmp_path):
    base = {"source": {"path": str(tmp_path), "text_column": "t"}, "sink": {"path": str(tmp_path)}}
    with pytest.raises(ConfigError, match="65535"):
        load_settings(None, ["embed.muvera_k_sim=8", "embed.muvera_dim_proj=16"], base=base)
    assert load_settings(None, ["embed.first_stage=none", "embed.muvera_k_sim=8"], base=base)


def settings_for(tmp_path, corpus, onnx_cache, sink, **embed):
    return load_settings(
        None,
        base={
            "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                       "payload_columns": ["title"], "rows_per_block": 16, "name": "docs"},
            "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 16,
                      **embed},
            "sink": sink,
            "run": {"dir": str(tmp_path / "runs"), "progress": False},
        },
    )  # fmt: skip


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    return float((query @ doc.T).max(axis=1).sum())


ENGINES = {
    "edge": lambda tmp: {"kind": "edge", "path": str(tmp / "edge")},
    "qdrant-local": lambda tmp: {"kind": "qdrant", "path": str(tmp / "local"), "collection": "d"},
}


@pytest.fixture
def in_process(monkeypatch):
    """These tests are of layouts, encodings, datatypes and queries, the same whichever executor embeds the rows: every stage
    runs in this process (run.executor=local), which keeps Ray's start-up out of them; the
    Ray path is tested elsewhere (test_pipeline, test_reliability, test_server, ...)."""
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_two_stage_queries_are_exact_maxsim_over_their_candidates(
    engine, in_process, tmp_path, small_corpus, module_docs, onnx_cache
):
    settings = settings_for(tmp_path, small_corpus, onnx_cache, ENGINES[engine](tmp_path))
    report = colray.ingest(settings)
    assert report.points_written == 60
    assert report.stages_s["first_stage"] > 0  # the encodings were made in the embed stage
    embedder = load_embedder(settings.embed)
    layout = text_layout(settings.embed, embedder.dim)
    assert [(s.name, s.multivector, s.hnsw) for s in layout] == [
        ("text", True, False), ("text_muvera", False, True)
    ]  # fmt: skip
    muvera = muvera_for(settings.embed, embedder.dim)
    sink = open_sink(settings.sink, layout)
    sink.open_for_reading()
    try:
        stored = sink.retrieve_all(with_vectors=True)
        for point in stored:  # the stored encoding is the document's, from its stored tokens
            np.testing.assert_allclose(
                point.vectors["text_muvera"], muvera.encode_document(point.vectors["text"]),
                rtol=1e-5, atol=1e-5,
            )  # fmt: skip
        for doc in sorted(module_docs[:60], key=lambda d: -len(d["text"]))[:4]:
            tokens = embedder.embed_query(" ".join(doc["text"].split()[:12]))
            queries = {"text": tokens, "text_muvera": muvera.encode_query(tokens)}
            exact = sorted(
                ((maxsim(tokens, p.vectors["text"]), p.id) for p in stored), reverse=True
            )
            # Every point is a candidate: the answer is brute-force MaxSim itself.
            everything = QueryPlan("text", ("text_muvera",), prefetch_limit=60)
            hits = sink.query(queries, everything, limit=5)
            assert [h.id for h in hits] == [pid for _, pid in exact[:5]]
            np.testing.assert_allclose(
                [h.score for h in hits], [s for s, _ in exact[:5]], atol=1e-4
            )
            assert hits[0].payload["title"] == doc["title"]
            # Eight candidates: the hits are among MUVERA's top eight, ordered by exact MaxSim.
            first = sorted((float(queries["text_muvera"] @ p.vectors["text_muvera"]), p.id)
                           for p in stored)[::-1]  # fmt: skip
            eighth = first[7][0]
            by_id = {p.id: p for p in stored}
            hits = sink.query(
                queries, QueryPlan("text", ("text_muvera",), prefetch_limit=8), limit=5
            )
            assert len(hits) == 5
            for hit in hits:
                assert (
                    float(queries["text_muvera"] @ by_id[hit.id].vectors["text_muvera"])
                    >= eighth - 1e-3
                )
                assert hit.score == pytest.approx(
                    maxsim(tokens, by_id[hit.id].vectors["text"]), abs=1e-4
                )
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # The public search runs the same plan.
        plan = text_query_plan(settings.embed, 5)
        assert plan.prefetch == ("text_muvera",) and plan.prefetch_limit == 1200
    finally:
        sink.close()
    assert colray.search(settings, module_docs[0]["text"][:80], limit=1)[0].payload["title"]


@pytest.mark.slow
def test_float16_stores_keep_float16_precision_and_the_ranking(
    in_process, tmp_path, small_corpus, module_docs, onnx_cache
):
    # On Edge, which stores halves (qdrant-client's local mode ignores the datatype).
    settings = settings_for(tmp_path, small_corpus, onnx_cache, ENGINES["edge"](tmp_path),
                            datatype="float16")  # fmt: skip
    assert colray.ingest(settings).points_written == 60
    embedder = load_embedder(settings.embed)
    sink = open_sink(settings.sink, text_layout(settings.embed, embedder.dim))
    sink.open_for_reading()
    stored = {h.payload["title"]: h.vectors for h in sink.retrieve_all(with_vectors=True)}
    sink.close()
    rounded = 0
    for doc in module_docs[:60]:
        full = embedder.embed_documents([doc["text"]])[0]
        # To float16 precision: the halves of the model's own float32 vectors, give or take
        # one half's step where the pipeline's batch and this one differ in the last bits.
        halves = full.astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(stored[doc["title"]]["text"], halves, rtol=2**-10, atol=1e-6)
        rounded += not np.array_equal(stored[doc["title"]]["text"], full)
    assert rounded == 60  # really stored as halves
    for doc in sorted(module_docs[:60], key=lambda d: -len(d["text"]))[:5]:
        hits = colray.search(settings, " ".join(doc["text"].split()[:15]), limit=3)
        assert hits[0].payload["title"] == doc["title"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_an_old_layout_store_is_refused_and_reindex_migrates_it(
    engine, in_process, tmp_path, small_corpus, onnx_cache
):
    sink = ENGINES[engine](tmp_path)
    old = settings_for(tmp_path, small_corpus, onnx_cache, sink, first_stage="none")
    new = settings_for(tmp_path, small_corpus, onnx_cache, sink)
    assert colray.ingest(old).points_written == 60
    runs = sorted((tmp_path / "runs").iterdir())
    with pytest.raises(colray.SinkError, match=r"no vector named 'text_muvera'.*colray reindex"):
        colray.ingest(new)
    assert sorted((tmp_path / "runs").iterdir()) == runs  # refused before any work began
    # The refused store itself, made by `colray ingest`: --adopt rebuilds it behind its name.
    with pytest.raises(colray.SinkError, match=r"not (a pointer|an alias).*--adopt"):
        colray.reindex(new)
    adopted = colray.reindex(new, adopt=True)
    assert adopted.points_written == 60 and adopted.reindex["mode"] == "rebuild"
    assert adopted.mode == "reindex" and adopted.exit_code == 0
    assert colray.search(new, "read and write zip archives", limit=3)
    store = open_sink(new.sink, prepare_job(new).layout)  # the new layout, behind the old name
    store.open_for_reading()
    assert not store.layout_problems() and store.count() == 60
    store.close()
    if engine == "edge":  # the plain store is kept as the previous version
        assert Path(new.sink.path).is_symlink()
        assert adopted.reindex["previous"] == adopted.reindex["adopted"]
        kept = Path(new.sink.path + ".versions") / adopted.reindex["previous"]
        old_store = open_sink(old.sink.model_copy(update={"path": str(kept)}),
                              prepare_job(old).layout)  # fmt: skip
        old_store.open_for_reading()
        assert not old_store.layout_problems() and old_store.count() == 60
        old_store.close()
    else:  # Qdrant cannot rename a collection: the plain one is gone, the alias in its place
        assert adopted.reindex["previous"] is None
    # reindex serves through a stable name: build the old layout that way, then migrate.
    first = colray.reindex(old.model_copy(update={"sink": old.sink.model_copy(
        update={"path": str(tmp_path / "served")} if engine == "edge" else {"collection": "served"})}))  # fmt: skip
    served = first.reindex["served_as"]
    target = {"path": served} if engine == "edge" else {"collection": "served"}
    new_served = new.model_copy(update={"sink": new.sink.model_copy(update=target)})
    # --incremental on the old layout cannot update in place: it rebuilds, and switches.
    report = colray.reindex(new_served, incremental=True)
    assert report.reindex["mode"] == "rebuild"
    assert any("text_muvera" in change for change in report.reindex["layout_changed"])
    assert report.points_written == 60 and report.reindex["previous"] == first.reindex["version"]
    assert report.reindex["version"] != first.reindex["version"]
    hits = colray.search(new_served, "read and write zip archives", limit=3)
    assert len(hits) == 3
    # From now on, incremental runs update the new layout in place.
    again = colray.reindex(new_served, incremental=True)
    assert again.reindex["mode"] == "incremental" and again.incremental["unchanged"] == 60
    assert again.mode == "reindex --incremental"
