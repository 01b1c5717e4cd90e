"""The driver: check the job, open the sink, run read -> [decode] -> embed on Ray, hand the blocks
to the writers, finalize, and conclude the ledger. Each resource is a `with` block.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import ray

from colray.config import EmbedConfig, ImageConfig, RunConfig, Settings
from colray.decode import decode_images
from colray.dispatch import Writers
from colray.job import Job, prepare_job
from colray.ray_blocks import output_blocks
from colray.report import Ledger, RunReport
from colray.sink import open_prepared_sink
from colray.sources import SkipRules, read_dataset
from colray.stages import EmbedStage, ImageEmbedStage

BLOCK_BYTES = 16 << 20  # ~200 MiniLM documents or ~30 ColPali pages per block to a writer


def run_ingest(
    settings: Settings,
    report_path: str | os.PathLike[str] | None = None,
    *,
    incremental: bool = False,
    client: Any = None,
) -> RunReport:
    """Run one ingest job on Ray and return its report (also written as JSON).

    `incremental`: skip rows stored with the same content hash, re-embed changed ones and
    delete points whose rows left the source. `client`: an open qdrant-client to write
    through (local mode allows one per directory, so a process that also queries shares it).
    """
    started = time.perf_counter()
    job = prepare_job(settings)
    with (
        Ledger(job, report_path, started=started) as ledger,
        # The driver owns the store's lifecycle: it creates or checks it before anything is
        # embedded, and switches indexing back on at the end. Writer actors only write.
        closing(open_prepared_sink(settings.sink, job.layout, client)) as sink,
    ):
        if incremental:
            ledger.track_changes(sink.stored_hashes())
        ledger.stage_s["prepare"] = ledger.elapsed()
        ensure_ray(settings)
        with ray_data_context(settings.run), Writers(job, sink) as writers:
            # Starting execution spawns the embedder actors, whose start-up (seconds) overlaps
            # the writers' checks; the actors still wait for those checks before embedding.
            try:
                blocks = output_blocks(plan(job, writers.ready, ledger.skip_rules()))
            finally:
                # A refused layout also stops the embedders; the writer's reason is the one.
                with ledger.timed("writers_ready"):
                    writers.wait_ready()
            ledger.begin_writing()
            for outcome in writers.write_all(ledger.timing_first(blocks)):
                ledger.record(outcome)
        ledger.delete_vanished(sink)
        with ledger.timed("finalize"):
            result = sink.finalize()
            ledger.finalized(result, sink.count())
    return ledger.conclude()


def ensure_ray(settings: Settings) -> None:
    if ray.is_initialized():
        return
    ray.init(
        address=settings.run.ray_address,
        logging_level=logging.WARNING,
        log_to_driver=True,
        include_dashboard=False,
        configure_logging=True,
    )


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
    ctx.enable_progress_bars = run.progress
    ctx.verbose_stats_logs = False
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


def plan(job: Job, sink_ready: list[Any], rules: SkipRules) -> ray.data.Dataset:
    """read -> [decode images] -> [embed text] -> [embed images]: the stages the job needs."""
    settings = job.settings
    dataset = read_dataset(job.source, rules)
    if job.image_model is not None:
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
        text_args = {"cfg": settings.embed, "text_column": settings.source.text_column}
        dataset = _actor_stage(dataset, EmbedStage, settings.embed, text_args, sink_ready)
    if job.image_model is not None:
        image_args = {"cfg": settings.image, "info": job.image_model}
        dataset = _actor_stage(dataset, ImageEmbedStage, settings.image, image_args, sink_ready)
    return dataset


def _actor_stage(
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
