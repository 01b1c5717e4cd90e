"""The Ray Data plan of a job: read -> [split + render documents | decode images] -> [embed text]
-> [embed images], and Ray Data's process-wide settings for the run that executes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow as pa
import ray

from colray.config import EmbedConfig, ImageConfig, RunConfig
from colray.decode import decode_images
from colray.job import Job
from colray.render import render_pages, split_documents
from colray.rows import DOCUMENT, PAGE_TEXT
from colray.sources import SkipRules, read_dataset, read_pieces
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
    if not verbose():  # its warnings too: "Progress bars disabled", which colray did on purpose
        logging.getLogger("ray.data").setLevel(logging.ERROR)
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


@dataclass(frozen=True)
class Step:
    """One stage of a job: a batch function (or an actor class that loads a model once) and
    how Ray runs it. The same steps run on Ray (`plan`) or in this process (`run_in_process`)."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any]  # the function's keywords, or the actor's constructor's
    batch_size: int
    num_cpus: float
    pool: EmbedConfig | ImageConfig | None = None  # an actor pool of this section's size
    # Blocks of at most this many rows first: a document's page rows are tiny (references to
    # pages), and Ray Data would otherwise keep a long document's pages in one render task.
    rows_per_block: int | None = None


def steps(job: Job, sink_ready: list[Any], rules: SkipRules, tags: dict[str, str]) -> list[Step]:
    """[split + render documents | decode images] -> [embed text] -> [embed images]: the
    stages the job needs after the read."""
    settings = job.settings
    source, image = settings.source, settings.image
    found: list[Step] = []
    if source.documents:
        found += page_steps(job, rules)
    elif job.image_model is not None:
        decode_args = {"image_column": source.image_column, "geometry": job.image_model.geometry,
                       "max_pixels": image.max_pixels}  # fmt: skip
        found.append(Step(decode_images, decode_args, image.rows_per_call, image.decode_cpus))
    if job.text_dim is not None:
        text_args = {
            "cfg": settings.embed,
            "text_column": PAGE_TEXT if source.documents else source.text_column,
            "optional": source.documents,  # a scanned page has no text layer
            "tags": tags,
            "sink_ready": sink_ready,
        }
        found.append(embed_step(EmbedStage, settings.embed, text_args))
    if job.image_model is not None:
        image_args = {"cfg": image, "info": job.image_model, "tags": tags,
                      "sink_ready": sink_ready}  # fmt: skip
        found.append(embed_step(ImageEmbedStage, image, image_args))
    return found


def page_steps(job: Job, rules: SkipRules) -> list[Step]:
    """Documents split into page rows, then pages rendered, in separate tasks: one long
    document's pages spread over many render tasks."""
    source, image = job.settings.source, job.settings.image
    assert job.image_model is not None
    split_args = {
        "document_column": source.document_column or DOCUMENT,
        "source_name": job.source.name,
        "rules": rules,
        "payload_columns": source.payload_columns,
    }
    render_args = {
        "geometry": job.image_model.geometry,
        "max_pixels": image.max_pixels,
        "render_dpi": image.render_dpi,
        "with_text": source.page_text,
    }
    return [
        # Not the render stage's reservation: Ray Data fuses neighbouring stages of equal
        # resources into one task, which would render a whole document in its split task.
        Step(split_documents, split_args, 1, image.decode_cpus * SPLIT_CPU_SHARE),
        Step(
            render_pages,
            render_args,
            image.rows_per_call,
            image.decode_cpus,
            rows_per_block=image.rows_per_call,
        ),
    ]


SPLIT_CPU_SHARE = 0.5  # opening a document and listing its pages is light work


def embed_step(stage: type, cfg: EmbedConfig | ImageConfig, args: dict[str, Any]) -> Step:
    """An embedding stage: a pool of actors, each loading its model once."""
    return Step(stage, args, cfg.rows_per_call, cfg.cpus_per_actor, pool=cfg)


def plan(
    job: Job, sink_ready: list[Any], rules: SkipRules, tags: dict[str, str] | None = None
) -> ray.data.Dataset:
    """The job's stages as one Ray dataset, from the read on."""
    return on_ray(read_dataset(job.source, rules), steps(job, sink_ready, rules, tags or {}))


def page_stages(dataset: ray.data.Dataset, job: Job, rules: SkipRules) -> ray.data.Dataset:
    """A dataset of document rows to rendered page rows (for the documents benchmark)."""
    return on_ray(dataset, page_steps(job, rules))


def on_ray(dataset: ray.data.Dataset, stages: list[Step]) -> ray.data.Dataset:
    """Each step as a Ray Data stage: tasks for the CPU work, actor pools for the models."""
    for step in stages:
        if step.rows_per_block is not None:
            dataset = dataset.repartition(target_num_rows_per_block=step.rows_per_block)
        placement: dict[str, Any] = {
            "compute": ray.data.TaskPoolStrategy(),
            "fn_kwargs": step.kwargs,
        }
        if step.pool is not None:
            placement = {
                "compute": ray.data.ActorPoolStrategy(size=step.pool.num_actors),
                "fn_constructor_kwargs": step.kwargs,
                "num_gpus": step.pool.num_gpus or None,
            }
        dataset = dataset.map_batches(step.fn, num_cpus=step.num_cpus,
                                      batch_size=step.batch_size, batch_format="pyarrow",
                                      **placement)  # fmt: skip
    return dataset


def run_in_process(job: Job, rules: SkipRules, tags: dict[str, str]) -> Iterator[pa.Table]:
    """The job's stages in this process, one block at a time through all of them: no Ray.
    The same functions and stage classes as on Ray, so rows, vectors and reasons are the same."""
    called = [
        (step, step.fn(**step.kwargs) if step.pool is not None else partial(step.fn, **step.kwargs))
        for step in steps(job, [], rules, tags)
    ]
    for block in read_pieces(job.source, job.source.pieces, rules):
        yield from _through(block, called)


@dataclass(frozen=True)
class InProcessBlock:
    """A block made in this process, handed to the writers as Ray's block references are."""

    table: pa.Table

    def fetch(self) -> pa.Table:
        return self.table


def _through(
    table: pa.Table, stages: list[tuple[Step, Callable[[pa.Table], Any]]]
) -> Iterator[pa.Table]:
    if not stages:
        yield table
        return
    (step, call), rest = stages[0], stages[1:]
    for start in range(0, table.num_rows, step.batch_size):
        out = call(table.slice(start, step.batch_size))
        for part in [out] if isinstance(out, pa.Table) else out:  # split_documents yields
            yield from _through(part, rest)
