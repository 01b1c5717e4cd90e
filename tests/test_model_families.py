"""The newest ColPali families (ColQwen3, ColGemma3) and a tiled one (ColIdefics3), built tiny
and offline, through colray's production loader: shapes, masks, patch grids, pooling refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from colray.config import ConfigError, ImageConfig, load_settings
from colray.embed.colpali import (
    ColPaliFamilyEmbedder,
    describe_image_model,
    pool_by_rows_and_columns,
)
from colray.job import prepare_job
from page_data import page_image

SIZES = [(100, 60), (60, 140), (90, 90)]  # landscape, portrait, square: one padded batch


@pytest.fixture(scope="module")
def new_families(tmp_path_factory) -> dict[str, Path]:
    from tiny_vision_models import (
        build_tiny_colgemma3,
        build_tiny_colidefics3,
        build_tiny_colqwen3,
    )

    root = tmp_path_factory.mktemp("new-families")
    return {
        "colqwen3": build_tiny_colqwen3(root / "colqwen3"),
        "colgemma3": build_tiny_colgemma3(root / "colgemma3"),
        "colidefics3": build_tiny_colidefics3(root / "colidefics3"),
    }


def loaded(model: Path) -> ColPaliFamilyEmbedder:
    return ColPaliFamilyEmbedder(
        describe_image_model(str(model)), ImageConfig(model=str(model), batch_size=2)
    )


def pages_and_batch(embedder: ColPaliFamilyEmbedder) -> tuple[list, list, dict]:
    geometry = embedder.info.geometry
    images = [
        page_image(w, h, i).resize(geometry.target_size(w, h)) for i, (w, h) in enumerate(SIZES)
    ]
    return images, embedder.embed_images(images), embedder.processor.process_images(images)


def assert_one_block_of_image_tokens(embedder, batch, i: int, page, n_tokens: int) -> None:
    mask = batch["attention_mask"][i].numpy().astype(bool)
    assert len(page.vectors) == mask.sum()  # exactly the unpadded positions
    ids = batch["input_ids"][i].numpy()[mask]
    image_positions = np.flatnonzero(ids == embedder.image_token_id)
    assert len(image_positions) == n_tokens
    assert page.patch_start == image_positions[0]
    assert np.all(np.diff(image_positions) == 1)  # one contiguous row-major block
    np.testing.assert_allclose(np.linalg.norm(page.vectors, axis=1), 1.0, atol=1e-4)


def test_colqwen3_is_detected_with_its_320_dim_head_and_32_pixel_cells(new_families):
    info = describe_image_model(str(new_families["colqwen3"]))
    assert (info.family, info.dim, info.grid) == ("qwen3_vl", 320, "qwen")
    # Qwen3-VL keeps its pixel bounds in `size` only: 16-pixel patches, 2x2 merge.
    assert (info.geometry.mode, info.geometry.factor) == ("qwen", 32)
    assert (info.geometry.min_pixels, info.geometry.max_pixels) == (32 * 32 * 4, 32 * 32 * 16)


def test_colqwen3_pages_match_their_grid_without_padding(new_families):
    embedder = loaded(new_families["colqwen3"])
    images, pages, batch = pages_and_batch(embedder)
    assert not batch["attention_mask"].numpy().astype(bool).all(), "the test needs padding"
    for i, (page, image) in enumerate(zip(pages, images, strict=True)):
        rows, cols = image.height // 32, image.width // 32
        assert page.grid == (rows, cols)
        assert page.vectors.shape[1] == 320 and page.vectors.dtype == np.float32
        assert_one_block_of_image_tokens(embedder, batch, i, page, rows * cols)
        by_rows, by_cols = pool_by_rows_and_columns(page)
        others = len(page.vectors) - rows * cols
        assert (len(by_rows), len(by_cols)) == (rows + others, cols + others)
    (alone,) = embedder.embed_images([images[1]])  # batching does not change a page's vectors
    np.testing.assert_allclose(pages[1].vectors, alone.vectors, atol=1e-4)
    assert embedder.embed_query("what is the total amount due?").shape[1] == 320


def test_colgemma3_pages_pool_to_mm_tokens_per_image(new_families):
    info = describe_image_model(str(new_families["colgemma3"]))
    assert (info.family, info.dim, info.grid) == ("gemma3", 128, "square")
    assert (info.geometry.mode, info.geometry.width, info.geometry.height) == ("fixed", 112, 112)
    embedder = loaded(new_families["colgemma3"])
    images, pages, batch = pages_and_batch(embedder)
    for i, page in enumerate(pages):
        # SigLIP's 8x8 patches, average-pooled by Gemma 3 to mm_tokens_per_image = 16 (4x4).
        assert page.grid == (4, 4)
        assert page.patch_start > 0  # after <bos>, the turn's opening and <start_of_image>
        assert_one_block_of_image_tokens(embedder, batch, i, page, 16)
    (alone,) = embedder.embed_images([images[0]])
    np.testing.assert_allclose(pages[0].vectors, alone.vectors, atol=1e-4)


def with_processor_option(model: Path, target: Path, **options) -> Path:
    shutil.copytree(model, target)
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = target / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text())
        (config.get("image_processor", config)).update(options)
        path.write_text(json.dumps(config))
    return target


def test_gemma3_pan_and_scan_has_no_single_grid_so_pooled_is_refused(
    new_families, tmp_path, page_corpus
):
    model = with_processor_option(
        new_families["colgemma3"], tmp_path / "pan-and-scan", do_pan_and_scan=True
    )
    assert describe_image_model(str(model)).grid is None
    with pytest.raises(ConfigError, match=r"image\.pooled: this gemma3 model splits pages"):
        prepare_job(pooled_settings(model, page_corpus, tmp_path / "store"))


def pooled_settings(model: Path, corpus: Path, store: Path):
    return load_settings(
        None,
        base={
            "source": {"path": str(corpus), "image_column": "image"},
            "image": {"model": str(model)},  # pooled is on by default
            "sink": {"kind": "edge", "path": str(store)},
        },
    )


def test_colidefics3_tiles_pages_so_it_has_no_grid_and_refuses_pooled(
    new_families, tmp_path, page_corpus
):
    model = new_families["colidefics3"]
    info = describe_image_model(str(model))
    assert (info.family, info.dim, info.grid) == ("idefics3", 128, None)
    assert (info.geometry.mode, info.geometry.longest_edge) == ("longest_edge", 64)
    embedder = loaded(model)
    images, pages, batch = pages_and_batch(embedder)
    masks = batch["attention_mask"].numpy().astype(bool)
    assert not masks.all(), "the test needs padding"
    for i, page in enumerate(pages):
        assert page.grid is None and len(page.vectors) == masks[i].sum()
        ids = batch["input_ids"][i].numpy()[masks[i]]
        # Tiles and the global image, each a run of image tokens: no single grid to pool.
        image_positions = np.flatnonzero(ids == embedder.image_token_id)
        assert len(image_positions) > 4 and not np.all(np.diff(image_positions) == 1)
        np.testing.assert_allclose(np.linalg.norm(page.vectors, axis=1), 1.0, atol=1e-4)
    assert len({len(p.vectors) for p in pages}) > 1  # page shapes give different tilings
    (alone,) = embedder.embed_images([images[1]])
    np.testing.assert_allclose(pages[1].vectors, alone.vectors, atol=1e-4)
    with pytest.raises(ConfigError, match=r"image\.pooled: this idefics3 model splits pages"):
        prepare_job(pooled_settings(model, page_corpus, tmp_path / "store"))
