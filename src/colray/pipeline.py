"""The driver: check the job, open the sink, run read -> [decode] -> embed on Ray, hand the blocks
to the writers, finalize, and conclude the ledger. Each resource is a `with` block.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

import ray

from colray import metrics
from colray.config import RunConfig, Settings
from colray.dispatch import Writers
from colray.errors import RayUnavailable, SinkUnavailable, WorkerFailed
from colray.job import Job, prepare_job
from colray.plan import InProcessBlock, plan, ray_data_context, run_in_process, verbose
from colray.ray_blocks import output_blocks
from colray.report import Ledger, RunOrigin, RunReport
from colray.rows import short
from colray.sink import Sink, open_prepared_sink


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
        embed_and_write(job, sink, ledger)
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


def embed_and_write(job: Job, sink: Sink, ledger: Ledger) -> None:
    """Start Ray, run the plan, and hand each embedded block to the writers as it comes."""
    settings = job.settings
    tags = metrics.run_tags(ledger.report.run_id, settings.sink.name())
    metrics.use(tags)  # the driver's retries are counted for the report, on Ray or not
    if job.in_process:
        say(settings.run, "a small job: every stage in this process, no Ray (run.executor)")
        with Writers(job, sink) as writers:
            ledger.begin_writing()
            tables = run_in_process(job, ledger.skip_rules(), tags)
            for outcome in writers.write_all(ledger.timing_first(map(InProcessBlock, tables))):
                ledger.record(outcome)
        return
    ensure_ray(settings)
    actors = settings.embed.num_actors if job.text_dim else settings.image.num_actors
    say(
        settings.run,
        f"starting {actors} embedding actor(s); they load the model, then rows flow",
    )
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


def ensure_ray(settings: Settings) -> None:
    """Join run.ray_address, or start (or join) a local Ray."""
    if ray.is_initialized():
        return
    run = settings.run
    say(run, f"joining Ray at {run.ray_address}" if run.ray_address
        else "starting Ray (a local node: a few seconds)")  # fmt: skip
    port = run.metrics_port
    try:
        with native_stderr_kept_back() as said:
            ray.init(
                address=run.ray_address,
                logging_level=logging.INFO if verbose() else logging.ERROR,
                # A cluster job's logs are where its workers' lines belong; on a laptop's
                # console, the workers' and raylet's notices are chatter unless -v.
                log_to_driver=verbose() or bool(run.ray_address),
                include_dashboard=False,
                configure_logging=True,
                # Only when this starts Ray: a cluster's nodes export on their own ports.
                **({"_metrics_export_port": port} if port and not run.ray_address else {}),
            )
    except Exception as exc:  # a node that timed out starting, an address nobody answers
        where = run.ray_address or "a local node"
        native = f" (Ray said: {short(said[0], 300)})" if said and said[0] else ""
        raise RayUnavailable(f"Ray could not start or join {where}: {short(exc)}{native}") from exc


@contextmanager
def native_stderr_kept_back() -> Iterator[list[str]]:
    """Without -v, what Ray's C++ core writes to this process's stderr while it starts (a
    notice of the log level it read, among others) is kept back: the yielded list gets its
    text, for an error message if the start fails."""
    said: list[str] = []
    if verbose():
        yield said
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as kept:
        os.dup2(kept.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            kept.seek(0)
            said.append(kept.read().decode(errors="replace").strip())


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
