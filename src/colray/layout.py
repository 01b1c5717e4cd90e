"""Which vectors a job stores (names, sizes, index, storage) and the query plan that reads them.

Ingest, both sink engines and the query path take the layout from here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from colray.config import EmbedConfig, ImageConfig, Settings


Distance = Literal["cosine", "dot"]
Datatype = Literal["float32", "float16"]
# MUVERA encodings are compared by dot product: the paper's approximation is of the inner
# product (Chamfer similarity), and measured here cosine ranked no better (README, Performance).
MUVERA_DISTANCE: Distance = "dot"


@dataclass(frozen=True)
class VectorSpec:
    """One named vector: a multivector (MaxSim over cosine similarities of `dim`-sized token
    vectors) or, with `multivector=False`, one dense vector of `dim` dims."""

    name: str
    dim: int
    hnsw: bool = True  # False: rerank-only (hnsw m=0), searched through a prefetch
    on_disk: bool = False
    binary_quantization: bool = False  # kept in RAM (always_ram), originals rescore
    multivector: bool = True
    distance: Distance = "cosine"
    datatype: Datatype = "float32"


@dataclass(frozen=True)
class QueryPlan:
    """How to search: first-stage candidates from `prefetch` vectors, reranked on `using`."""

    using: str
    prefetch: tuple[str, ...] = ()
    prefetch_limit: int = 200
    oversampling: float | None = None  # with binary quantization: fetch more, then rescore
    rescore: bool | None = None


def muvera_vector_name(cfg: EmbedConfig) -> str:
    return f"{cfg.vector_name}_muvera"


def text_layout(cfg: EmbedConfig, dim: int) -> list[VectorSpec]:
    """The text multivector, one vector per token; with the MUVERA first stage it is
    rerank-only and the document's encoding, a dense vector with HNSW, comes beside it."""
    if cfg.first_stage == "none":
        return [VectorSpec(cfg.vector_name, dim, datatype=cfg.datatype)]
    size = cfg.muvera_r_reps * 2**cfg.muvera_k_sim * cfg.muvera_dim_proj
    return [
        VectorSpec(cfg.vector_name, dim, hnsw=False, datatype=cfg.datatype),
        VectorSpec(muvera_vector_name(cfg), size, multivector=False, distance=MUVERA_DISTANCE,
                   datatype=cfg.datatype),
    ]  # fmt: skip


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
        datatype=cfg.datatype,
    )
    pooled = [VectorSpec(name, dim, datatype=cfg.datatype) for name in image_vector_names(cfg)[1:]]
    return [original, *pooled]


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
            "text" if settings.source.embeds_text or not settings.source.embeds_pages else "image"
        )
    if vector == settings.image.vector_name:
        return "image"
    if vector == settings.embed.vector_name:
        return "text"
    known = [settings.embed.vector_name, settings.image.vector_name]
    raise ValueError(f"{vector!r} is not one of {', '.join(known)}")


def text_query_plan(cfg: EmbedConfig, limit: int) -> QueryPlan:
    """With the first stage, prefetch on the MUVERA vector and rerank on the token vectors."""
    if cfg.first_stage == "none":
        return QueryPlan(using=cfg.vector_name)
    return QueryPlan(
        using=cfg.vector_name,
        prefetch=(muvera_vector_name(cfg),),
        prefetch_limit=max(cfg.prefetch_limit, limit),
    )


def layout_problems(
    wanted: list[VectorSpec], found: dict[str, VectorSpec], *, for_writing: bool
) -> list[str]:
    """How a store's vectors (as read back from it) differ from the ones a job uses. Reading
    needs the vectors a query uses; writing needs the layout exactly as the job stores it."""
    problems = []
    for spec in wanted:
        have = found.get(spec.name)
        if have is None:
            problems.append(f"no vector named {spec.name!r} (has: {', '.join(found) or 'none'})")
            continue
        if have.multivector != spec.multivector:
            kind = "a multivector" if spec.multivector else "a dense vector"
            problems.append(f"{spec.name!r} is not {kind}")
        if have.dim != spec.dim:
            problems.append(f"{spec.name!r} has {have.dim} dims, this job's has {spec.dim} dims")
        if have.distance != spec.distance:
            problems.append(f"{spec.name!r} uses {have.distance}, expected {spec.distance}")
        if for_writing and have.hnsw != spec.hnsw:
            problems.append(f"{spec.name!r} is {_index(have)}, this job stores it {_index(spec)}")
        if for_writing and have.datatype != spec.datatype:
            problems.append(
                f"{spec.name!r} is stored as {have.datatype}, this job stores {spec.datatype}"
            )
    extra = sorted(set(found) - {spec.name for spec in wanted})
    if for_writing and extra:
        problems.append(f"the store has vectors this job does not write: {', '.join(extra)}")
    return problems


def _index(spec: VectorSpec) -> str:
    return "indexed with HNSW" if spec.hnsw else "rerank-only (m=0)"


MIGRATE_HINT = (
    "To move a store to this job's layout, rebuild it with `colray reindex` (a new version is "
    "built and switched to at once; add --adopt for a store that `colray ingest` made); or use "
    "a new store, or the settings it was built with (embed.first_stage, embed.datatype, the "
    "model)."
)


def image_query_plan(cfg: ImageConfig, limit: int) -> QueryPlan:
    """Prefetch on the pooled vectors when there are any, rerank on the originals."""
    return QueryPlan(
        using=cfg.vector_name,
        prefetch=tuple(image_vector_names(cfg)[1:]),
        prefetch_limit=max(cfg.prefetch_limit, limit),
        oversampling=cfg.oversampling if cfg.binary_quantization else None,
        rescore=cfg.rescore if cfg.binary_quantization else None,
    )
