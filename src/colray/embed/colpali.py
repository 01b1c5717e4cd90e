"""Page-image embedders: ColPali-family models through colpali-engine, one vector per patch.

Knows each family's loader classes, its patch grid (for pooling) and its resizing geometry.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

    from colray.config import ImageConfig

# colpali-engine's projection head: 128 dims (`self.dim = 128`) for every family but ColQwen3
# (`self.dim = 320`). The checkpoint's own head decides (see _projection_dim); this is the fallback.
COLPALI_ENGINE_DIM = 128


@dataclass(frozen=True)
class ImageFamily:
    """A ColPali-family model as colpali-engine ships it, known by config.json's model_type."""

    model_type: str
    name: str
    model_class: str
    processor_class: str
    grid: str | None  # how the patch grid is laid out; None: tiled, no single grid to pool
    needs: str  # what a user points image.model at
    dim: int = COLPALI_ENGINE_DIM


IMAGE_FAMILIES: dict[str, ImageFamily] = {
    f.model_type: f
    for f in (
        ImageFamily("paligemma", "ColPali", "ColPali", "ColPaliProcessor", "square",
                    "a colpali-engine ColPali directory or Hub id (vidore/colpali-v1.3-merged)"),
        ImageFamily("qwen2_vl", "ColQwen2", "ColQwen2", "ColQwen2Processor", "qwen",
                    "a merged ColQwen2 directory or Hub id (vidore/colqwen2-v1.0-merged)"),
        ImageFamily("qwen2_5_vl", "ColQwen2.5", "ColQwen2_5", "ColQwen2_5_Processor", "qwen",
                    "a merged ColQwen2.5 directory or Hub id (vidore/colqwen2.5-v0.2)"),
        ImageFamily("qwen3_vl", "ColQwen3", "ColQwen3", "ColQwen3Processor", "qwen",
                    "a merged ColQwen3 directory or Hub id (Qwen3-VL backbone, 320 dims)", 320),
        ImageFamily("qwen3_5", "ColQwen3.5", "ColQwen3_5", "ColQwen3_5Processor", "qwen",
                    "a merged ColQwen3.5 directory or Hub id (Qwen3.5 backbone)"),
        ImageFamily("qwen2_5_omni_thinker", "ColQwen2.5-Omni", "ColQwen2_5Omni",
                    "ColQwen2_5OmniProcessor", "qwen",
                    "a merged ColQwen2.5-Omni (thinker) directory or Hub id"),
        # Gemma 3 average-pools SigLIP's patches to mm_tokens_per_image (256 = 16x16) tokens.
        ImageFamily("gemma3", "ColGemma3", "ColGemma3", "ColGemmaProcessor3", "square",
                    "a merged ColGemma3 directory or Hub id (Gemma 3 backbone); no pan-and-scan"),
        ImageFamily("idefics3", "ColIdefics3", "ColIdefics3", "ColIdefics3Processor", None,
                    "a ColIdefics3/ColSmol directory or Hub id; image.pooled=false (tiled)"),
        ImageFamily("modernvbert", "ColModernVBert", "ColModernVBert", "ColModernVBertProcessor",
                    None, "a ColModernVBert directory or Hub id; image.pooled=false (tiled)"),
    )
}  # fmt: skip


@dataclass(frozen=True)
class ImageGeometry:
    """The model's own resizing, applied while decoding so only model-sized pixels travel."""

    mode: str  # "qwen" (pixel budget, multiples of factor), "fixed", "longest_edge", "none"
    factor: int = 1
    min_pixels: int = 0
    max_pixels: int = 0
    height: int = 0
    width: int = 0
    longest_edge: int = 0

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        if self.mode == "fixed":
            return self.width, self.height
        if self.mode == "qwen":
            new_h, new_w = qwen_smart_resize(
                height, width, self.factor, self.min_pixels, self.max_pixels
            )
            return new_w, new_h
        if self.mode == "longest_edge" and max(width, height) > self.longest_edge:
            scale = self.longest_edge / max(width, height)
            return max(1, round(width * scale)), max(1, round(height * scale))
        return width, height


def qwen_smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """transformers' Qwen2-VL `smart_resize`, line for line (a test compares the two).

    Kept here because importing transformers costs each decode worker seconds and hundreds
    of MB for one small function; Qwen2/2.5/3-VL, Qwen3.5 and Omni processors all use it.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got "
            f"{max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImageModelInfo:
    """What the driver learns about an image model from its files, without loading weights."""

    model_dir: Path
    family: str  # config.json's model_type, a key of IMAGE_FAMILIES
    dim: int
    geometry: ImageGeometry
    grid: str | None  # None: the family has no single patch grid to pool over

    @property
    def classes(self) -> tuple[str, str]:
        family = IMAGE_FAMILIES[self.family]
        return family.model_class, family.processor_class


def describe_image_model(model: str) -> ImageModelInfo:
    """Family, output size and resizing of a local directory or Hub id; ValueError if unknown."""
    from colray.embed import resolve_model_dir

    model_dir, _ = resolve_model_dir(model, named=False)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{model_dir} has no config.json (is it a colpali-engine model?)")
    family = json.loads(config_path.read_text()).get("model_type", "")
    if family not in IMAGE_FAMILIES:
        raise ValueError(
            f"model_type {family!r} in {config_path} is not a ColPali-family model "
            f"(known: {', '.join(IMAGE_FAMILIES)})"
        )
    known = IMAGE_FAMILIES[family]
    image_processor = _image_processor_config(model_dir)
    grid = known.grid
    if image_processor.get("do_pan_and_scan"):
        grid = None  # Gemma 3's pan-and-scan adds a grid per crop: no single grid per page
    return ImageModelInfo(
        model_dir,
        family,
        _projection_dim(model_dir, known.dim),
        _geometry(image_processor),
        grid,
    )


def _projection_dim(model_dir: Path, default: int = COLPALI_ENGINE_DIM) -> int:
    """The projection head's output size, read from the safetensors header (no weights loaded)."""
    from safetensors import safe_open

    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="numpy") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                # ColIdefics3 names its head `linear`; the other families `custom_text_proj`.
                if name.endswith("custom_text_proj.weight") or name == "linear.weight":
                    return int(weights.get_slice(name).get_shape()[0])
    return default


def _image_processor_config(model_dir: Path) -> dict[str, Any]:
    # Hub repositories keep preprocessor_config.json; transformers 5 saves processor_config.json.
    pre = model_dir / "preprocessor_config.json"
    if pre.is_file():
        return dict(json.loads(pre.read_text()))
    proc = model_dir / "processor_config.json"
    return dict(json.loads(proc.read_text()).get("image_processor", {})) if proc.is_file() else {}


def _geometry(config: dict[str, Any]) -> ImageGeometry:
    """Qwen2-VL style processors (Qwen2/2.5-VL, Qwen3-VL, Qwen3.5, Omni) keep patch_size and
    merge_size, with pixel bounds in min/max_pixels or in size's shortest/longest_edge."""
    size = config.get("size") or {}
    if "merge_size" in config and "patch_size" in config:
        return ImageGeometry(
            "qwen",
            factor=int(config["patch_size"]) * int(config["merge_size"]),
            min_pixels=int(config.get("min_pixels") or size.get("shortest_edge") or 56 * 56),
            max_pixels=int(config.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280),
        )
    if "height" in size and "width" in size:
        return ImageGeometry("fixed", height=int(size["height"]), width=int(size["width"]))
    if "longest_edge" in size:
        return ImageGeometry("longest_edge", longest_edge=int(size["longest_edge"]))
    return ImageGeometry("none")


@dataclass
class PageEmbedding:
    """One page: its token vectors (padding dropped) and where the patch grid sits in them."""

    vectors: np.ndarray  # (n, dim) float32
    patch_start: int  # index of the first patch vector
    grid: tuple[int, int] | None  # (rows, cols) of patch vectors, row-major from patch_start


def pool_by_rows_and_columns(page: PageEmbedding) -> tuple[np.ndarray, np.ndarray]:
    """Qdrant's "ColPali at scale" pooling: mean over each grid row / column, other tokens kept."""
    if page.grid is None:
        raise ValueError("this model has no patch grid to pool over")
    rows, cols = page.grid
    end = page.patch_start + rows * cols
    patches = page.vectors[page.patch_start : end].reshape(rows, cols, -1)
    others = np.concatenate([page.vectors[: page.patch_start], page.vectors[end:]])
    by_rows = np.concatenate([patches.mean(axis=1), others]).astype(np.float32)
    by_cols = np.concatenate([patches.mean(axis=0), others]).astype(np.float32)
    return by_rows, by_cols


@dataclass
class _Launched:
    """A forward pass started by ColPaliFamilyEmbedder._launch, and what its pages need."""

    tensor: Any  # the model's output (float32), on the host or on its way there
    done: Any  # a CUDA event once the copy to the host has landed; None on the CPU
    mask: np.ndarray
    input_ids: np.ndarray
    grids: list[list[int]] | None

    def output(self) -> np.ndarray:
        if self.done is not None:
            self.done.synchronize()
        return self.tensor.numpy()


class ColPaliFamilyEmbedder:
    """A colpali-engine model and its processor, loaded once per actor (or per query process)."""

    def __init__(self, info: ImageModelInfo, cfg: ImageConfig, *, use_gpu: bool = False):
        import colpali_engine.models as colpali_models
        import torch

        self.info = info
        self.cfg = cfg
        self.dim = info.dim
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        if self.device == "cpu":
            torch.set_num_threads(cfg.threads())
        # bf16 on a GPU as the models are published; float32 on CPU, where bf16 is slow.
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        model_class, processor_class = info.classes
        self.model = getattr(colpali_models, model_class).from_pretrained(
            str(info.model_dir), dtype=dtype, device_map=self.device
        )
        self.model.eval()
        self.processor = getattr(colpali_models, processor_class).from_pretrained(
            str(info.model_dir)
        )
        config = self.model.config
        self.image_token_id = getattr(config, "image_token_id", None)
        if self.image_token_id is None:
            self.image_token_id = getattr(config, "image_token_index", None)

    def embed_images(self, images: list[Image.Image]) -> list[PageEmbedding]:
        """Pages in order. On a GPU the processor prepares batch i+1 on the CPU while the
        model still runs batch i: CUDA calls return at once, and nothing waits on batch i
        until its outputs are collected."""
        pages: list[PageEmbedding] = []
        in_flight: _Launched | None = None
        for start in range(0, len(images), self.cfg.batch_size):
            batch = self.processor.process_images(images[start : start + self.cfg.batch_size])
            batch.pop("labels", None)  # ColPali's processor adds training labels
            launched = self._launch(batch)
            if in_flight is not None:
                pages.extend(self._pages(in_flight))
            in_flight = launched
        if in_flight is not None:
            pages.extend(self._pages(in_flight))
        return pages

    def embed_query(self, text: str) -> np.ndarray:
        launched = self._launch(self.processor.process_queries([text]))
        output = launched.output()
        return output[0][launched.mask[0]]

    def _launch(self, batch: Any) -> _Launched:
        """Start the forward pass; on CUDA, return before it finishes."""
        import torch

        # Host-side copies of what the pages need, taken before the batch moves.
        mask = batch["attention_mask"].bool().numpy()
        input_ids = batch["input_ids"].numpy()
        grids = batch.get("image_grid_thw")
        on_gpu = self.device == "cuda"
        if on_gpu:
            # Page-locked host memory lets the upload run as DMA without blocking this thread.
            batch = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        with torch.inference_mode():
            output = self.model(**batch).to(torch.float32)
            done = None
            if on_gpu:
                # Into pinned host memory, asynchronously; the event marks when it has landed.
                output = output.to("cpu", non_blocking=True)
                done = torch.cuda.Event()
                done.record()
        return _Launched(output, done, mask, input_ids, None if grids is None else grids.tolist())

    def _pages(self, launched: _Launched) -> list[PageEmbedding]:
        output, mask = launched.output(), launched.mask
        pages = []
        for i in range(len(output)):
            kept_ids = launched.input_ids[i][mask[i]]
            vectors = np.ascontiguousarray(output[i][mask[i]])
            is_patch = kept_ids == self.image_token_id
            n_patches = int(is_patch.sum())
            patch_start = int(np.argmax(is_patch)) if n_patches else 0
            grid = self._grid(n_patches, None if launched.grids is None else launched.grids[i])
            if grid is not None and not is_patch[patch_start : patch_start + n_patches].all():
                grid = None  # the image tokens are not one block: no grid to pool over
            pages.append(PageEmbedding(vectors, patch_start, grid))
        return pages

    def _grid(self, n_patches: int, thw: list[int] | None) -> tuple[int, int] | None:
        if self.info.grid == "square":
            # Gemma 3 says how many tokens a page pools to; PaliGemma's count is the whole grid.
            expected = getattr(self.model.config, "mm_tokens_per_image", None)
            if expected is not None and n_patches != expected:
                return None
            side = math.isqrt(n_patches)
            return (side, side) if side * side == n_patches and side else None
        if self.info.grid == "qwen" and thw is not None:
            merge = int(getattr(self.model, "spatial_merge_size", 2))
            t, h, w = thw
            rows, cols = t * h // merge, w // merge
            return (rows, cols) if rows * cols == n_patches else None
        return None
