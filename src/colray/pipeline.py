"""The driver: check the job, open the sink, run read -> [decode] -> embed on Ray, hand the blocks
to the writers, finalize, and conclude the ledger. Each resource is a `with` block.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import ray

from colray import metrics
from colray.config import EmbedConfig, ImageConfig, RunConfig, Settings
from colray.decode import decode_images
from colray.dispatch import Writers
from colray.errors import RayUnavailable, SinkUnavailable, WorkerFailed
from colray.job import Job, prepare_job
from colray.ray_blocks import output_blocks
from colray.render import render_pages, split_documents
from colray.report import Ledger, RunOrigin, RunReport
from colray.rows import DOCUMENT, PAGE_TEXT, short
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
    origin: RunOrigin | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> RunReport:
    """Run one ingest job on Ray and return its report (also written as JSON).

    `incremental`: skip rows stored with the same content hash, re-embed changed ones and
    delete points whose rows left the source. `client`: an open qdrant-client to write
    through (local mode allows one per directory, so a process that also queries shares it).
    """
    started = time.perf_counter()
    say(settings.run, "checking the job: its source files and models")
    job = prepare_job(settings)
    rows = (
        f"{job.source.num_rows} documents"
        if settings.source.documents
        else f"{job.source.num_rows} rows"
    )
    say(settings.run, f"{rows} in {len(job.source.pieces)} pieces of {job.source.name}")
    with (
        Ledger(
            job,
            report_path,
            started=started,
            origin=origin,
            incremental=incremental,
            on_progress=on_progress,
        ) as ledger,
        # The driver owns the store's lifecycle: it creates or checks it before anything is
        # embedded, and switches indexing back on at the end. Writer actors only write.
        closing(open_prepared_sink(settings.sink, job.layout, client)) as sink,
    ):
        if incremental:
            ledger.track_changes(sink.stored_hashes())
        ledger.stage_s["prepare"] = ledger.elapsed()
        ledger.begun = True
        ledger.publish("preparing", force=True)
        ensure_ray(settings)
        actors = settings.embed.num_actors if job.text_dim else settings.image.num_actors
        say(
            settings.run,
            f"starting {actors} embedding actor(s); they load the model, then rows flow",
        )
        tags = metrics.run_tags(ledger.report.run_id, settings.sink.name())
        metrics.use(tags)
        with ray_data_context(settings.run), Writers(job, sink, tags) as writers, worker_failures():
            # Starting execution spawns the embedder actors, whose start-up (seconds) overlaps
            # the writers' checks; the actors still wait for those checks before embedding.
            try:
                blocks = output_blocks(plan(job, writers.ready, ledger.skip_rules(), tags))
            finally:
                # A refused layout also stops the embedders; the writer's reason is the one.
                with ledger.timed("writers_ready"):
                    writers.wait_ready()
            ledger.begin_writing()
            for outcome in writers.write_all(ledger.timing_first(blocks)):
                ledger.record(outcome)
        ledger.delete_vanished(sink)
        ledger.publish("indexing", force=True)
        say(
            settings.run,
            "indexing: the store builds its index (Qdrant Edge: here; a server: it reports)",
        )
        with ledger.timed("finalize"):
            result = sink.finalize(
                progress=settings.run.progress,
                on_progress=lambda seen: ledger.publish("indexing", indexing=seen),
            )
            ledger.finalized(result, sink.count())
        ledger.publish("done", force=True)
    return ledger.conclude()


def ensure_ray(settings: Settings) -> None:
    """Join run.ray_address, or start (or join) a local Ray."""
    if ray.is_initialized():
        return
    say(settings.run, f"joining Ray at {settings.run.ray_address}" if settings.run.ray_address
        else "starting Ray (a local node: a few seconds)")  # fmt: skip
    port = settings.run.metrics_port
    try:
        ray.init(
            address=settings.run.ray_address,
            logging_level=logging.INFO if verbose() else logging.ERROR,
            log_to_driver=True,
            include_dashboard=False,
            configure_logging=True,
            # Only when this starts Ray: a cluster's nodes export on their own ports.
            **({"_metrics_export_port": port} if port and not settings.run.ray_address else {}),
        )
    except Exception as exc:  # a node that timed out starting, an address nobody answers
        where = settings.run.ray_address or "a local node"
        raise RayUnavailable(f"Ray could not start or join {where}: {short(exc)}") from exc


def verbose() -> bool:
    """`colray -v`: Ray's own logs and progress bars too (else colray's alone)."""
    return os.environ.get("COLRAY_VERBOSE", "") not in ("", "0")


def say(run: RunConfig, text: str) -> None:
    """A phase line, so nobody waits in silence (with run.progress)."""
    if run.progress:
        print(f"· {text}", file=sys.stderr, flush=True)


@contextmanager
def worker_failures() -> Iterator[None]:
    """Ray's errors from the workers as colray's run failures, said in one line."""
    try:
        yield
    except SinkUnavailable as exc:  # raised in a writer actor, Ray's wrapping taken off
        cause = getattr(exc, "cause", None) or exc
        raise SinkUnavailable(*cause.args) from None
    except ray.exceptions.RayError as exc:
        raise WorkerFailed(f"a Ray worker of the job failed: {root_cause(exc)}") from exc


def root_cause(exc: BaseException) -> str:
    """The error underneath Ray's wrapping: the cause Ray kept, or the last `SomeError: ...`
    line of the traceback Ray put in the message."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {short(cause)}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.findall(r"^\s*(\w+(?:Error|Exception)): (.+)$", text, flags=re.MULTILINE)
    if found:
        name, message = found[-1]
        return f"{name}: {message.strip()[:300]}"
    return short(exc, 300)


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
        dataset = _actor_stage(dataset, EmbedStage, settings.embed, text_args, sink_ready)
    if job.image_model is not None:
        image_args = {"cfg": settings.image, "info": job.image_model, "tags": tags or {}}
        dataset = _actor_stage(dataset, ImageEmbedStage, settings.image, image_args, sink_ready)
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
