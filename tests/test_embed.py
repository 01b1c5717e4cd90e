"""ONNX text embedders against PyTorch references of the same weights."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

from colray.config import EmbedConfig
from colray.embed import REGISTRY, Embedder, load_embedder, resolve_model_dir
from colray.embed.onnx_text import OnnxColbertEmbedder, load_tokenizer
from colray.embed.pooling import pool_tokens

SENTENCES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn, twice.",
    "Qdrant stores one vector per token.",
    "a",
    "Late interaction compares every query token with every document token and sums the "
    "best matches; ColBERT made it practical and ColPali carried it over to page images.",
]


@pytest.fixture(scope="module")
def minilm(onnx_cache: str) -> Embedder:
    return load_embedder(EmbedConfig(model="minilm-token", cache_dir=onnx_cache, batch_size=2))


def test_token_profile_matches_sentence_transformers(minilm: Embedder) -> None:
    from sentence_transformers import SentenceTransformer

    model_dir, _ = resolve_model_dir("minilm-token")
    reference = SentenceTransformer(str(model_dir), device="cpu").encode(
        SENTENCES, output_value="token_embeddings"
    )
    ours = minilm.embed_documents(SENTENCES)
    assert minilm.dim == 384
    for got, ref in zip(ours, reference, strict=True):
        ref = ref.numpy()[1:-1]  # sentence-transformers keeps [CLS] and [SEP]
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        assert got.dtype == np.float32
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4


def test_token_profile_results_do_not_depend_on_batch_neighbours(minilm: Embedder) -> None:
    together = minilm.embed_documents(SENTENCES)
    alone = [minilm.embed_documents([s])[0] for s in SENTENCES]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_token_profile_query_is_document_embedding(minilm: Embedder) -> None:
    np.testing.assert_allclose(
        minilm.embed_query(SENTENCES[2]), minilm.embed_documents([SENTENCES[2]])[0], atol=1e-6
    )


def test_registry_lists_real_layouts() -> None:
    assert REGISTRY["answerai-colbert-small-v1"].onnx_file == "vespa_colbert.onnx"
    assert REGISTRY["answerai-colbert-small-v1"].dim == 96
    assert REGISTRY["colbertv2.0"].onnx_file == "model.onnx"
    assert REGISTRY["colbertv2.0"].dim == 128


# --- colbert profile --------------------------------------------------------------------


def _skiplist(tokenizer) -> set[int]:
    return {tokenizer.encode(p, add_special_tokens=False).ids[0] for p in string.punctuation}


def reference_doc(tiny, texts: list[str]) -> list[np.ndarray]:
    """colbert-ai's DocTokenizer + ColBERT.doc: '. ' prefix, [D] over the '.', skiplist."""
    tokenizer = load_tokenizer(tiny.directory)
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=tiny.doc_maxlen)
    doc_marker = tokenizer.token_to_id("[unused1]")
    skip = _skiplist(tokenizer)
    out = []
    for text in texts:
        ids = tokenizer.encode(". " + text).ids
        ids[1] = doc_marker
        x = torch.tensor([ids])
        with torch.inference_mode():
            vectors = tiny.linear(
                tiny.bert(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
            )[0]
        keep = torch.tensor([t not in skip for t in ids])
        vectors = torch.nn.functional.normalize(vectors[keep], p=2, dim=-1)
        out.append(vectors.numpy())
    return out


def reference_query(tiny, text: str) -> np.ndarray:
    """colbert-ai's QueryTokenizer + ColBERT.query: pad to query_maxlen with [MASK]."""
    tokenizer = load_tokenizer(tiny.directory)
    tokenizer.enable_truncation(max_length=tiny.query_maxlen)
    pad = tokenizer.token_to_id("[PAD]")
    tokenizer.enable_padding(length=tiny.query_maxlen, pad_id=pad, pad_token="[PAD]")
    encoding = tokenizer.encode(". " + text)
    ids = torch.tensor([encoding.ids])
    mask = torch.tensor([encoding.attention_mask])
    ids[0, 1] = tokenizer.token_to_id("[unused0]")
    ids[ids == pad] = tokenizer.token_to_id("[MASK]")
    with torch.inference_mode():
        vectors = tiny.linear(tiny.bert(input_ids=ids, attention_mask=mask).last_hidden_state)[0]
    return torch.nn.functional.normalize(vectors, p=2, dim=-1).numpy()


@pytest.fixture(scope="module")
def colbert(tiny_colbert) -> OnnxColbertEmbedder:
    embedder = load_embedder(EmbedConfig(model=str(tiny_colbert.directory), batch_size=2))
    assert isinstance(embedder, OnnxColbertEmbedder)  # inferred from the repository layout
    return embedder


def test_colbert_documents_match_pytorch_reference(colbert, tiny_colbert) -> None:
    texts = [
        "Hello, world! This module parses (some) arguments.",
        "zip files",
        "A long document that goes on and on, well past the document length limit, so "
        "truncation has to happen exactly where ColBERT would cut it off; nothing more.",
    ]
    ours = colbert.embed_documents(texts)
    expected = reference_doc(tiny_colbert, texts)
    tokenizer = load_tokenizer(tiny_colbert.directory)
    for text, got, ref in zip(texts, ours, expected, strict=True):
        assert got.shape == ref.shape, text
        assert np.abs(got - ref).max() <= 1e-4
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Punctuation was skipped: the first text has 6 punctuation marks among its tokens.
    ids = tokenizer.encode(texts[0]).ids
    punctuation = sum(t in _skiplist(tokenizer) for t in ids)
    assert punctuation >= 5
    assert len(ours[0]) == len(ids) + 1 - punctuation  # + [D] marker
    assert len(ours[2]) <= tiny_colbert.doc_maxlen


def test_colbert_query_is_mask_augmented_and_matches_reference(colbert, tiny_colbert) -> None:
    query = colbert.embed_query("parse arguments")
    assert query.shape == (tiny_colbert.query_maxlen, colbert.dim)
    assert np.abs(query - reference_query(tiny_colbert, "parse arguments")).max() <= 1e-4
    # The [MASK] slots are real, distinct vectors, not copies of padding.
    assert not np.allclose(query[-1], query[-2], atol=1e-3)
    long_query = colbert.embed_query(" ".join(["word"] * 50))
    assert long_query.shape == (tiny_colbert.query_maxlen, colbert.dim)


def test_colbertv2_layout_loads_from_model_onnx(tiny_colbert, tmp_path) -> None:
    """colbert-ir/colbertv2.0 ships `model.onnx`; same recipe, other file name."""
    import shutil

    target = tmp_path / "colbertv2-layout"
    shutil.copytree(tiny_colbert.directory, target)
    (target / "vespa_colbert.onnx").rename(target / "model.onnx")
    embedder = load_embedder(EmbedConfig(model=str(target), profile="colbert"))
    assert isinstance(embedder, OnnxColbertEmbedder)
    reference = load_embedder(EmbedConfig(model=str(tiny_colbert.directory)))
    np.testing.assert_allclose(
        embedder.embed_documents(["zip files"])[0],
        reference.embed_documents(["zip files"])[0],
        atol=1e-6,
    )


def test_unknown_model_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="not a registered name or a local directory"):
        load_embedder(EmbedConfig(model=str(tmp_path / "no-such-model")))


def test_token_pooling_keeps_the_marker_and_merges_similar_tokens(minilm: Embedder) -> None:
    text = "The zipfile module reads and writes ZIP archives. " * 4
    (tokens,) = minilm.embed_documents([text])
    pooled = pool_tokens(tokens, 2)
    assert len(pooled) == 1 + (len(tokens) - 1) // 2
    np.testing.assert_array_equal(pooled[0], tokens[0])  # the first vector is never merged
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=1), 1.0, rtol=1e-5)
    # Each pooled vector stands for real tokens: it is close to one of them.
    assert (pooled[1:] @ tokens[1:].T).max(axis=1).min() > 0.7
    # The sentence is repeated four times: its copies merge, and MaxSim barely moves.
    query = minilm.embed_query("read zip archives")
    full, reduced = (float((query @ d.T).max(axis=1).sum()) for d in (tokens, pooled))
    assert abs(full - reduced) / full < 0.05
    assert pool_tokens(tokens, 1) is tokens
    assert len(pool_tokens(tokens[:2], 4)) == 2  # nothing to merge


@pytest.mark.parametrize("family", ["token", "colbert"])
def test_io_binding_path_gives_the_plain_run_results(family, onnx_cache, tiny_colbert) -> None:
    # On a GPU the embedders bind inputs and outputs to CUDA memory; the same code runs here
    # bound to the CPU device, so the binding itself (names, shapes, dtypes) is checked.
    model = "minilm-token" if family == "token" else str(tiny_colbert.directory)
    embedder = load_embedder(EmbedConfig(model=model, cache_dir=onnx_cache, batch_size=2))
    assert embedder.io_device is None  # CPU provider: plain run()
    plain = embedder.embed_documents(SENTENCES)
    plain_query = embedder.embed_query("parse arguments")
    embedder.io_device = "cpu"
    bound = embedder.embed_documents(SENTENCES)
    for a, b in zip(plain, bound, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain_query, embedder.embed_query("parse arguments"))
