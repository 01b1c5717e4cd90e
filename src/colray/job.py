"""What a job is: its checked source, its models, the vectors it stores and its identity.

Derived once, in the driver, before Ray starts; everything that can fail on configuration fails
here. Frozen: the driver, the report and the resume state read it, nothing derives it again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from colray.config import ConfigError, Settings
from colray.embed.colpali import ImageModelInfo, describe_image_model
from colray.layout import VectorSpec, job_layout
from colray.sources import ResolvedSource, resolve_source

# What changes the points a model makes (not how fast or where it runs): a resumed run may
# use more actors or other batch sizes and still be the same job.
EMBED_IDENTITY = {"model", "profile", "vector_name", "doc_maxlen", "pool_factor"}
IMAGE_IDENTITY = {"model", "vector_name", "pooled", "max_pixels"}


@dataclass(frozen=True)
class Job:
    settings: Settings
    source: ResolvedSource
    text_dim: int | None  # None: the job embeds no text
    image_model: ImageModelInfo | None  # None: the job embeds no images
    layout: list[VectorSpec]
    fingerprint: str  # names the job's resume state
    salt: str  # part of every row's content hash
    in_process: bool  # run.executor, resolved: every stage in the driver, no Ray

    @property
    def model_names(self) -> str:
        names = [
            self.settings.embed.model if self.text_dim is not None else None,
            self.settings.image.model if self.image_model is not None else None,
        ]
        return " + ".join(n for n in names if n)


def prepare_job(settings: Settings) -> Job:
    """Check the source and each configured model, and derive the job from them."""
    source = resolve_source(settings.source)
    text_dim = _text_dim(settings) if settings.source.embeds_text else None
    image_model = _image_model(settings) if settings.source.embeds_pages else None
    layout = job_layout(settings, text_dim, image_model.dim if image_model else None)
    files = [f"{p.path}:{p.row_groups}" for p in source.pieces]
    return Job(
        settings,
        source,
        text_dim,
        image_model,
        layout,
        job_fingerprint(settings, layout, files),
        content_salt(settings, layout),
        runs_in_process(settings, source.num_rows),
    )


def runs_in_process(settings: Settings, rows: int) -> bool:
    """run.executor resolved. `auto` keeps a small job on one machine off Ray: a local node's
    start-up (10-20 s on a laptop) would be most of the run, and one embedding actor on a
    machine without GPUs embeds no faster on Ray than in this process. Ray it is for a cluster,
    GPUs, several actors, a metrics port, a server sink's writer actors, or many rows."""
    run, sink = settings.run, settings.sink
    if run.executor != "auto":
        return run.executor == "local"
    sections = []
    if settings.source.embeds_text:
        sections.append(settings.embed)
    if settings.source.embeds_pages:
        sections.append(settings.image)
    # A Ray job's driver (`colray submit`, `ray job submit`) has RAY_ADDRESS: its cluster.
    asks_for_ray = run.ray_address or run.metrics_port or os.environ.get("RAY_ADDRESS")
    one_machine = not asks_for_ray and all(s.num_actors == 1 and not s.num_gpus for s in sections)
    local_store = sink.single_process
    return one_machine and local_store and rows <= run.local_max_rows


def _text_dim(settings: Settings) -> int:
    from colray.embed import load_embedder

    cfg = settings.embed
    try:
        dim = load_embedder(cfg).dim
    except (ValueError, OSError) as exc:
        raise ConfigError([f"embed.model: {exc}"]) from None
    if cfg.first_stage == "muvera" and cfg.muvera_dim_proj > dim:
        raise ConfigError(
            [f"embed.muvera_dim_proj: {cfg.muvera_dim_proj} is more than the {dim} dims of "
             f"{cfg.model}'s vectors (MUVERA projects to fewer)"]
        )  # fmt: skip
    return dim


def _image_model(settings: Settings) -> ImageModelInfo:
    assert settings.image.model is not None  # the settings validator requires it
    try:
        info = describe_image_model(settings.image.model)
    except (ValueError, OSError) as exc:
        raise ConfigError([f"image.model: {exc}"]) from None
    if settings.image.pooled and info.grid is None:
        raise ConfigError(
            [
                f"image.pooled: this {info.family} model splits pages into tiles or crops "
                "(no single patch grid to pool over); set image.pooled=false"
            ]
        )
    return info


def job_fingerprint(settings: Settings, layout: list[Any], source_files: list[str]) -> str:
    """What makes two runs the same job: the rows, how they are embedded, and where they go."""
    identity = {
        "source": settings.source.model_dump(mode="json", exclude={"rows_per_block"}),
        "files": source_files,
        **model_identity(settings, layout),
        "sink": {
            "kind": settings.sink.kind,
            "where": settings.sink.url or settings.sink.path,
            "collection": settings.sink.collection,
        },
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def content_salt(settings: Settings, layout: list[Any]) -> str:
    """How rows become points: part of every row's content hash, so a new model or layout
    makes an incremental run re-embed everything."""
    identity = {**model_identity(settings, layout), "payload": settings.source.payload_columns}
    return json.dumps(identity, sort_keys=True)


def model_identity(settings: Settings, layout: list[Any]) -> dict[str, Any]:
    """The models and vector layout a job embeds with."""
    return {
        "embed": settings.embed.model_dump(mode="json", include=EMBED_IDENTITY)
        if settings.source.embeds_text
        else None,
        "image": settings.image.model_dump(mode="json", include=IMAGE_IDENTITY)
        if settings.source.embeds_pages
        else None,
        "layout": [repr(spec) for spec in layout],
    }
