"""Which vectors a job stores (names, sizes, index, storage) and the query plan that reads them.

Ingest, both sink engines and the query path take the layout from here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from colray.config import EmbedConfig, ImageConfig, Settings


@dataclass(frozen=True)
class VectorSpec:
    """One named multivector: MaxSim over cosine similarities of `dim`-sized token vectors."""

    name: str
    dim: int
    hnsw: bool = True  # False: rerank-only (hnsw m=0), searched through a prefetch
    on_disk: bool = False
    binary_quantization: bool = False  # kept in RAM (always_ram), originals rescore


@dataclass(frozen=True)
class QueryPlan:
    """How to search: first-stage candidates from `prefetch` vectors, reranked on `using`."""

    using: str
    prefetch: tuple[str, ...] = ()
    prefetch_limit: int = 200
    oversampling: float | None = None  # with binary quantization: fetch more, then rescore
    rescore: bool | None = None


def text_layout(cfg: EmbedConfig, dim: int) -> list[VectorSpec]:
    """The text multivector, one vector per token."""
    return [VectorSpec(cfg.vector_name, dim)]


def image_vector_names(cfg: ImageConfig) -> list[str]:
    """The original page vector, then the pooled ones the scale-ready layout adds."""
    name = cfg.vector_name
    return [name, f"{name}_rows", f"{name}_cols"] if cfg.pooled else [name]


def image_layout(cfg: ImageConfig, dim: int) -> list[VectorSpec]:
    """The page vector; with `pooled`, rerank-only (m=0) plus pooled vectors with HNSW."""
    original = VectorSpec(
        cfg.vector_name,
        dim,
        hnsw=not cfg.pooled,
        on_disk=cfg.on_disk,
        binary_quantization=cfg.binary_quantization,
    )
    return [original, *(VectorSpec(name, dim) for name in image_vector_names(cfg)[1:])]


def job_layout(settings: Settings, text_dim: int | None, image_dim: int | None) -> list[VectorSpec]:
    """Every vector of a job's points: the text vectors, then the page vectors."""
    specs = []
    if text_dim is not None:
        specs += text_layout(settings.embed, text_dim)
    if image_dim is not None:
        specs += image_layout(settings.image, image_dim)
    return specs


def searched_model(settings: Settings, vector: str | None) -> Literal["text", "image"]:
    """Which model embeds a query for `vector` (None: text when the job has text)."""
    if vector is None:
        return (
            "text" if settings.source.text_column or not settings.source.image_column else "image"
        )
    if vector == settings.image.vector_name:
        return "image"
    if vector == settings.embed.vector_name:
        return "text"
    known = [settings.embed.vector_name, settings.image.vector_name]
    raise ValueError(f"{vector!r} is not one of {', '.join(known)}")


def text_query_plan(cfg: EmbedConfig, limit: int) -> QueryPlan:
    return QueryPlan(using=cfg.vector_name)


def image_query_plan(cfg: ImageConfig, limit: int) -> QueryPlan:
    """Prefetch on the pooled vectors when there are any, rerank on the originals."""
    return QueryPlan(
        using=cfg.vector_name,
        prefetch=tuple(image_vector_names(cfg)[1:]),
        prefetch_limit=max(cfg.prefetch_limit, limit),
        oversampling=cfg.oversampling if cfg.binary_quantization else None,
        rescore=cfg.rescore if cfg.binary_quantization else None,
    )
