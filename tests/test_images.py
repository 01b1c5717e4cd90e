"""Page images: tiny ColQwen2/ColPali through the production loader, decoding, pooling, and the
image and text+image pipelines on both sink engines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import colray
from colray.config import ConfigError, ImageConfig, load_settings
from colray.decode import ImageRejected, decode_image
from colray.embed.colpali import (
    ColPaliFamilyEmbedder,
    ImageGeometry,
    PageEmbedding,
    describe_image_model,
    pool_by_rows_and_columns,
    qwen_smart_resize,
)
from colray.job import prepare_job
from colray.sink import open_sink
from page_data import BAD_PAGES, GOOD_PAGES, MAX_PIXELS, page_image, png_bytes


def loaded(vision_models, family: str) -> ColPaliFamilyEmbedder:
    info = describe_image_model(str(vision_models[family]))
    return ColPaliFamilyEmbedder(info, ImageConfig(model=str(vision_models[family]), batch_size=2))


# --- the loader, shapes and masks -------------------------------------------------------


def test_describe_reads_family_dim_and_geometry(vision_models):
    qwen = describe_image_model(str(vision_models["colqwen2"]))
    pali = describe_image_model(str(vision_models["colpali"]))
    assert (qwen.family, qwen.dim, qwen.grid, qwen.geometry.mode) == (
        "qwen2_vl",
        128,
        "qwen",
        "qwen",
    )
    assert qwen.geometry.factor == 28
    assert (pali.family, pali.dim, pali.grid) == ("paligemma", 128, "square")
    assert (pali.geometry.mode, pali.geometry.width, pali.geometry.height) == ("fixed", 56, 56)


@pytest.mark.parametrize("family", ["colqwen2", "colqwen2_5"])
def test_qwen_pages_have_no_padding_and_match_the_grid(vision_models, family):
    embedder = loaded(vision_models, family)
    geometry = embedder.info.geometry
    # Two sizes in one forward pass: the smaller page is left-padded by the processor.
    sizes = [(100, 60), (60, 140)]
    images = [
        page_image(w, h, i).resize(geometry.target_size(w, h)) for i, (w, h) in enumerate(sizes)
    ]
    batch = embedder.processor.process_images(images)
    mask = batch["attention_mask"].numpy().astype(bool)
    assert not mask.all(), "the test needs a padded batch"
    pages = embedder.embed_images(images)
    for i, (page, image) in enumerate(zip(pages, images, strict=True)):
        rows, cols = image.height // 28, image.width // 28  # 14-pixel patches, 2x2 merge
        assert page.grid == (rows, cols)
        assert len(page.vectors) == mask[i].sum()  # exactly the unpadded positions
        ids = batch["input_ids"][i].numpy()[mask[i]]
        image_positions = np.flatnonzero(ids == embedder.image_token_id)
        assert len(image_positions) == rows * cols
        assert page.patch_start == image_positions[0]
        assert np.all(np.diff(image_positions) == 1)  # one contiguous row-major block
        norms = np.linalg.norm(page.vectors, axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-4)  # no zero padding vectors
        assert page.vectors.dtype == np.float32 and page.vectors.shape[1] == 128


@pytest.mark.parametrize("family", ["colqwen2", "colpali"])
def test_batches_in_flight_give_each_page_its_own_vectors(vision_models, family):
    # batch_size=2 over 5 pages: the next batch is prepared while the previous one is still
    # being collected, and a last odd batch ends the run.
    embedder = loaded(vision_models, family)
    geometry = embedder.info.geometry
    sizes = [(100, 60), (60, 140), (90, 90), (140, 60), (70, 70)]
    images = [
        page_image(w, h, i).resize(geometry.target_size(w, h)) for i, (w, h) in enumerate(sizes)
    ]
    pages = embedder.embed_images(images)
    assert len(pages) == len(images)
    for page, image in zip(pages, images, strict=True):
        (alone,) = embedder.embed_images([image])
        assert page.grid == alone.grid and page.patch_start == alone.patch_start
        np.testing.assert_allclose(page.vectors, alone.vectors, atol=1e-4)


def test_colpali_pages_match_the_square_grid(vision_models):
    embedder = loaded(vision_models, "colpali")
    geometry = embedder.info.geometry
    images = [
        page_image(w, h, i).resize(geometry.target_size(w, h))
        for i, (w, h) in enumerate([(90, 40), (30, 70)])
    ]
    pages = embedder.embed_images(images)
    for page in pages:
        assert page.grid == (4, 4)  # 56-pixel square, 14-pixel patches
        assert page.patch_start == 0  # PaliGemma puts the image tokens first
        assert len(page.vectors) > 16
        assert np.isfinite(page.vectors).all()
    query = embedder.embed_query("what is the total amount due?")
    assert query.ndim == 2 and query.shape[1] == 128


def test_pooling_matches_an_independent_numpy_computation(vision_models):
    embedder = loaded(vision_models, "colqwen2")
    image = page_image(130, 90, 7)
    (page,) = embedder.embed_images([image.resize(embedder.info.geometry.target_size(130, 90))])
    by_rows, by_cols = pool_by_rows_and_columns(page)
    rows, cols = page.grid
    start = page.patch_start
    expected_rows, expected_cols = [], []
    for r in range(rows):
        expected_rows.append(sum(page.vectors[start + r * cols + c] for c in range(cols)) / cols)
    for c in range(cols):
        expected_cols.append(sum(page.vectors[start + r * cols + c] for r in range(rows)) / rows)
    others = [v for k, v in enumerate(page.vectors) if not start <= k < start + rows * cols]
    np.testing.assert_allclose(by_rows, np.array(expected_rows + others), atol=1e-6)
    np.testing.assert_allclose(by_cols, np.array(expected_cols + others), atol=1e-6)
    assert len(by_rows) == rows + len(page.vectors) - rows * cols


def test_pooling_refuses_a_page_without_grid():
    with pytest.raises(ValueError, match="no patch grid"):
        pool_by_rows_and_columns(PageEmbedding(np.zeros((5, 4), np.float32), 0, None))


# --- decoding ---------------------------------------------------------------------------

QWEN = ImageGeometry("qwen", factor=28, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)


def test_decode_accepts_structs_bytes_and_paths(tmp_path):
    image = page_image(200, 120, 1)
    path = tmp_path / "page.png"
    image.save(path)
    for cell in (
        {"bytes": png_bytes(image), "path": None},
        png_bytes(image),
        str(path),
        {"bytes": None, "path": str(path)},
    ):
        pixels, width, height = decode_image(cell, QWEN, 10**7)
        assert (width % 28, height % 28) == (0, 0)
        assert 4 <= (width // 28) * (height // 28) <= 16
        assert len(pixels) == width * height * 3


def test_decode_applies_exif_orientation():
    image = page_image(300, 100, 2)  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the page is portrait
    data = png_bytes(image, "JPEG", exif=exif.tobytes())
    _, width, height = decode_image(data, ImageGeometry("none"), 10**7)
    assert (width, height) == (100, 300)


def test_decode_refuses_bombs_garbage_and_nulls():
    with pytest.raises(ImageRejected, match=r"exceeds image\.max_pixels"):
        decode_image(png_bytes(page_image(200, 200, 3)), QWEN, 10_000)
    with pytest.raises(ImageRejected, match="cannot decode"):
        decode_image(b"not an image at all", QWEN, 10**7)
    with pytest.raises(ImageRejected, match="null"):
        decode_image(None, QWEN, 10**7)
    with pytest.raises(ImageRejected, match="cannot read"):
        decode_image("/nonexistent/page.png", QWEN, 10**7)
    with pytest.raises(ImageRejected, match="aspect ratio must be smaller than 200"):
        decode_image(png_bytes(Image.new("RGB", (1, 250), "white")), QWEN, 10**7)


def test_our_smart_resize_is_transformers_smart_resize():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    rng = np.random.default_rng(0)
    budgets = [(28, 28 * 28 * 4, 28 * 28 * 16), (28, 3136, 602_112), (32, 4096, 16_384)]
    for factor, low, high in budgets:
        for height, width in rng.integers(1, 6000, size=(400, 2)).tolist():
            if max(height, width) / min(height, width) > 200:
                continue
            ours = qwen_smart_resize(height, width, factor, low, high)
            assert ours == smart_resize(height, width, factor, low, high), (height, width)


def test_decoding_a_qwen_page_does_not_import_transformers():
    """Each decode worker would otherwise pay seconds and hundreds of MB for one function."""
    code = (
        "import sys\n"
        "from colray.decode import decode_image\n"
        "from colray.embed.colpali import ImageGeometry\n"
        "from page_data import page_image, png_bytes\n"
        "geometry = ImageGeometry('qwen', factor=28, min_pixels=3136, max_pixels=602112)\n"
        "_, w, h = decode_image(png_bytes(page_image(900, 1200, 1)), geometry, 10**8)\n"
        "assert (w % 28, h % 28) == (0, 0)\n"
        "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).parent,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


# --- configuration ------------------------------------------------------------------------


def test_image_column_needs_an_image_model(tmp_path):
    with pytest.raises(ConfigError, match=r"image\.model: required"):
        load_settings(
            None,
            base={
                "source": {"path": str(tmp_path), "image_column": "image"},
                "sink": {"path": str(tmp_path / "s")},
            },
        )


def test_tiled_families_cannot_use_the_pooled_layout(tmp_path, page_corpus):
    model = tmp_path / "idefics3"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "idefics3"}))
    settings = image_settings(
        tmp_path, page_corpus, model, {"kind": "edge", "path": str(tmp_path / "s")}
    )
    with pytest.raises(ConfigError, match=r"image\.pooled"):
        prepare_job(settings)


# --- end to end ---------------------------------------------------------------------------


def image_settings(tmp_path: Path, corpus: Path, model: Path, sink: dict, **extra):
    source = {
        "path": str(corpus),
        "image_column": "image",
        "id_column": "page_id",
        "payload_columns": ["caption"],
        **extra.pop("source", {}),
    }
    return load_settings(
        None,
        base={
            "source": source,
            "image": {
                "model": str(model),
                "batch_size": 3,
                "rows_per_call": 4,
                "cpus_per_actor": 0.5,
                "decode_cpus": 0.5,
                "max_pixels": MAX_PIXELS,
                **extra.pop("image", {}),
            },
            "sink": sink,
            "run": {"dir": str(tmp_path / "runs"), "progress": False, "max_failed_fraction": 0.5},
            **extra,
        },
    )


def maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    return float((query @ doc.T).max(axis=1).sum())


@pytest.mark.parametrize(
    ("family", "sink_kind", "image_options", "executor"),
    [
        ("colqwen2", "edge", {"binary_quantization": True, "on_disk": True}, "ray"),
        # The layout and the exact rerank are the sink's and the query's: the other family
        # and engine run in this process, which skips Ray's decode tasks and actor start.
        ("colpali", "qdrant", {}, "local"),
    ],
)
def test_page_ingest_stores_pooled_layout_and_reranks_exactly(
    ray_session,
    tmp_path,
    page_corpus,
    vision_models,
    family,
    sink_kind,
    image_options,
    executor,
    monkeypatch,
):
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", executor)
    sink = {"kind": sink_kind, "path": str(tmp_path / "store")}
    settings = image_settings(
        tmp_path, page_corpus, vision_models[family], sink, image=image_options
    )
    report = colray.ingest(settings)
    assert report.rows_read == GOOD_PAGES + len(BAD_PAGES)
    assert report.points_written == GOOD_PAGES and report.dead_lettered == len(BAD_PAGES)
    dead = {d["row_key"]: d for d in pq.read_table(report.dead_letter_path).to_pylist()}
    assert set(dead) == set(BAD_PAGES)
    for key, why in BAD_PAGES.items():
        assert dead[key]["stage"] == "decode" and why in dead[key]["error"], dead[key]

    prepared = prepare_job(settings)
    store = open_sink(settings.sink, prepared.layout)
    store.open_for_reading()
    points = {h.payload["caption"]: h for h in store.retrieve_all(with_vectors=True)}
    store.close()
    assert len(points) == GOOD_PAGES
    for hit in points.values():
        page, rows, cols = hit.vectors["page"], hit.vectors["page_rows"], hit.vectors["page_cols"]
        assert 0 < len(rows) < len(page) and 0 < len(cols) < len(page)

    # Prefetch on the pooled vectors (all 12 pages fit in it), rerank on the originals:
    # the order and scores equal brute-force MaxSim over every stored original.
    embedder = ColPaliFamilyEmbedder(prepared.image_model, settings.image)
    query = embedder.embed_query("quarterly revenue table")
    hits = colray.search(settings, "quarterly revenue table", limit=5)
    expected = sorted(
        ((maxsim(query, h.vectors["page"]), c) for c, h in points.items()), reverse=True
    )[:5]
    assert [h.payload["caption"] for h in hits] == [c for _, c in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for s, _ in expected], rtol=1e-3)

    again = colray.ingest(settings)  # re-run: same ids, nothing duplicated
    assert again.points_in_store == GOOD_PAGES


def test_text_and_page_vectors_in_one_point(
    ray_session, tmp_path, page_corpus, vision_models, onnx_cache
):
    sink = {"kind": "edge", "path": str(tmp_path / "store")}
    settings = image_settings(
        tmp_path,
        page_corpus,
        vision_models["colqwen2"],
        sink,
        source={"text_column": "caption"},
        image={"pooled": False},
        embed={
            "first_stage": "none",  # both models' vectors, and nothing else, in one point
            "model": "minilm-token",
            "cache_dir": onnx_cache,
            "cpus_per_actor": 0.5,
            "rows_per_call": 8,
        },
    )
    report = colray.ingest(settings)
    assert report.points_written == GOOD_PAGES and report.dead_lettered == len(BAD_PAGES)
    prepared = prepare_job(settings)
    assert [s.name for s in prepared.layout] == ["text", "page"]
    store = open_sink(settings.sink, prepared.layout)
    store.open_for_reading()
    hits = store.retrieve_all(with_vectors=True)
    store.close()
    assert len(hits) == GOOD_PAGES
    for hit in hits:
        assert set(hit.vectors) == {"text", "page"}
        assert hit.vectors["text"].shape[1] == 384 and hit.vectors["page"].shape[1] == 128


@pytest.mark.slow
def test_float16_page_vectors_keep_float16_precision(tmp_path, page_corpus, vision_models,
                                                     monkeypatch):  # fmt: skip
    """image.datatype: float16 on Edge stores each page's vectors as halves of the float32
    ones (in-process: the datatype is the sink's business, the same on Ray)."""
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")
    stored = {}
    for datatype in ("float32", "float16"):
        out = tmp_path / datatype
        settings = image_settings(out, page_corpus, vision_models["colqwen2"],
                                  {"kind": "edge", "path": str(out / "store")},
                                  image={"datatype": datatype})  # fmt: skip
        report = colray.ingest(settings)
        assert report.executor == "local" and report.points_written == GOOD_PAGES
        sink = open_sink(settings.sink, prepare_job(settings).layout)
        sink.open_for_reading()
        stored[datatype] = {h.id: h.vectors for h in sink.retrieve_all()}
        sink.close()
    assert stored["float16"].keys() == stored["float32"].keys()
    names = set(next(iter(stored["float32"].values())))
    assert "page" in names and len(names) == 3, names  # the page and its two pooled vectors
    for pid, full in stored["float32"].items():
        for name in names:
            halves = np.asarray(full[name], np.float32).astype(np.float16).astype(np.float32)
            np.testing.assert_allclose(stored["float16"][pid][name], halves, rtol=2**-10,
                                       atol=2**-24)  # fmt: skip
            assert not np.array_equal(stored["float16"][pid][name], full[name])
