"""The Ray Data plan of a job: read -> [split + render documents | decode images] -> [embed text]
-> [embed images], and Ray Data's process-wide settings for the run that executes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray

from colray.config import EmbedConfig, ImageConfig, RunConfig
from colray.decode import decode_images
from colray.job import Job
from colray.render import render_pages, split_documents
from colray.rows import DOCUMENT, PAGE_TEXT
from colray.sources import SkipRules, read_dataset
from colray.stages import EmbedStage, ImageEmbedStage

BLOCK_BYTES = 16 << 20  # ~200 MiniLM documents or ~30 ColPali pages per block to a writer


def verbose() -> bool:
    """`colray -v`: Ray's own logs and progress bars too (else colray's alone)."""
    return os.environ.get("COLRAY_VERBOSE", "") not in ("", "0")


@contextmanager
def ray_data_context(run: RunConfig) -> Iterator[None]:
    """Ray Data's process-wide settings for one run, put back as they were when it ends."""
    ctx = ray.data.DataContext.get_current()
    saved = (
        ctx.enable_progress_bars,
        ctx.verbose_stats_logs,
        ctx.target_max_block_size,
        ctx.execution_options.preserve_order,
    )
    # colray's own bar counts what is written; Ray Data's per-operator bars only with -v.
    ctx.enable_progress_bars = run.progress and verbose()
    ctx.verbose_stats_logs = False
    if not verbose():
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    # Ray Data holds a task's output until it reaches target_max_block_size (128 MiB by
    # default), which kept embedded batches from the writers until whole tasks ended.
    ctx.target_max_block_size = BLOCK_BYTES
    # Blocks reach the writers in source order, so of two rows with one id the later wins
    # (exactly with one writer; with several, unless both are in flight at once).
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        (
            ctx.enable_progress_bars,
            ctx.verbose_stats_logs,
            ctx.target_max_block_size,
            ctx.execution_options.preserve_order,
        ) = saved


def plan(
    job: Job, sink_ready: list[Any], rules: SkipRules, tags: dict[str, str] | None = None
) -> ray.data.Dataset:
    """read -> [split + render documents | decode images] -> [embed text] -> [embed images]:
    the stages the job needs."""
    settings = job.settings
    dataset = read_dataset(job.source, rules)
    if settings.source.documents:
        dataset = page_stages(dataset, job, rules)
    elif job.image_model is not None:
        dataset = dataset.map_batches(
            decode_images,
            fn_kwargs={
                "image_column": settings.source.image_column,
                "geometry": job.image_model.geometry,
                "max_pixels": settings.image.max_pixels,
            },
            compute=ray.data.TaskPoolStrategy(),
            num_cpus=settings.image.decode_cpus,
            batch_size=settings.image.rows_per_call,
            batch_format="pyarrow",
        )
    if job.text_dim is not None:
        text_args = {
            "cfg": settings.embed,
            "text_column": PAGE_TEXT if settings.source.documents else settings.source.text_column,
            "optional": settings.source.documents,  # a scanned page has no text layer
            "tags": tags or {},
        }
        dataset = actor_stage(dataset, EmbedStage, settings.embed, text_args, sink_ready)
    if job.image_model is not None:
        image_args = {"cfg": settings.image, "info": job.image_model, "tags": tags or {}}
        dataset = actor_stage(dataset, ImageEmbedStage, settings.image, image_args, sink_ready)
    return dataset


def page_stages(dataset: ray.data.Dataset, job: Job, rules: SkipRules) -> ray.data.Dataset:
    """Documents split into page rows, then pages rendered, in separate tasks: one long
    document's pages spread over many render tasks."""
    source, image = job.settings.source, job.settings.image
    assert job.image_model is not None
    pages = dataset.map_batches(
        split_documents,
        fn_kwargs={
            "document_column": source.document_column or DOCUMENT,
            "source_name": job.source.name,
            "rules": rules,
            "payload_columns": source.payload_columns,
        },
        compute=ray.data.TaskPoolStrategy(),
        # Not the render stage's reservation: Ray Data fuses neighbouring stages of equal
        # resources into one task, which would render a whole document in its split task.
        num_cpus=image.decode_cpus * SPLIT_CPU_SHARE,
        batch_size=1,
        batch_format="pyarrow",
    )
    # A document's page rows are tiny (references to pages): without this, Ray Data would keep
    # a long document's pages in one block, rendered by one task.
    pages = pages.repartition(target_num_rows_per_block=image.rows_per_call)
    return pages.map_batches(
        render_pages,
        fn_kwargs={
            "geometry": job.image_model.geometry,
            "max_pixels": image.max_pixels,
            "render_dpi": image.render_dpi,
            "with_text": source.page_text,
        },
        compute=ray.data.TaskPoolStrategy(),
        num_cpus=image.decode_cpus,
        batch_size=image.rows_per_call,
        batch_format="pyarrow",
    )


SPLIT_CPU_SHARE = 0.5  # opening a document and listing its pages is light work


def actor_stage(
    dataset: ray.data.Dataset,
    stage: type,
    cfg: EmbedConfig | ImageConfig,
    args: dict[str, Any],
    sink_ready: list[Any],
) -> ray.data.Dataset:
    """An embedding stage: a pool of actors, each loading its model once."""
    return dataset.map_batches(
        stage,
        fn_constructor_kwargs={**args, "sink_ready": sink_ready},
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.num_gpus or None,
        batch_size=cfg.rows_per_call,
        batch_format="pyarrow",
    )
