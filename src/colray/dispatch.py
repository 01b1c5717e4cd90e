"""Embedded blocks to writers: `sink.writers` actors for a Qdrant server, or the driver itself for
the single-process stores (Edge, local mode); one `WriteOutcome` per block, in the order done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray

from colray import metrics
from colray.config import SinkConfig
from colray.job import Job
from colray.layout import VectorSpec
from colray.points import BlockWriter, WriteOutcome
from colray.ray_blocks import BlockRef
from colray.rows import short
from colray.sink import Sink, SinkError, open_sink, unreachable

log = logging.getLogger("colray")

WRITES_IN_FLIGHT_PER_WRITER = 2


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SinkWriter:
    """Holds one sink connection; writes blocks of embedded rows as points."""

    def __init__(
        self,
        cfg: SinkConfig,
        layout: list[VectorSpec],
        payload_columns: list[str],
        source_name: str,
        tags: dict[str, str],
    ):
        metrics.use(tags)
        # A failed start is reported by ready(), not raised: Ray would print the actor's
        # death with a traceback, and an unreachable store is a user error, not a crash.
        self.startup_error: Exception | None = None
        self.sink: Sink | None = None
        try:
            self.sink = open_sink(cfg, layout)
            self.writer = BlockWriter(self.sink, cfg, layout, payload_columns, source_name)
        except Exception as exc:  # unreachable server, refused credentials, ...
            self.startup_error = unreachable(cfg, exc)

    def ready(self) -> Exception | None:
        return self.startup_error

    def write(self, table: pa.Table, start: int | None, end: int | None) -> WriteOutcome:
        return self.writer.write(BlockRef(None, start, end).rows_of(table))

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


class Writers:
    """Where embedded blocks are written.

    A Qdrant server gets `sink.writers` actors. Edge and local mode lock their directory to one
    process, so the driver, which already holds it open, writes those itself: the store stays
    on the machine the job was started from, and the driver's process may query it meanwhile.
    A job that runs in this process (no Ray) writes through the driver's sink too.
    """

    def __init__(self, job: Job, sink: Sink, tags: dict[str, str] | None = None):
        cfg = job.settings.sink
        args = (cfg, job.layout, job.settings.source.payload_columns, job.source.name)
        self.local: BlockWriter | None = None
        self.actors: list[Any] = []
        if cfg.single_process or job.in_process:
            self.local = BlockWriter(sink, *args)
        else:
            writer = SinkWriter.options(num_cpus=cfg.cpus_per_writer)  # type: ignore[attr-defined]
            self.actors = [writer.remote(*args, tags or {}) for _ in range(cfg.writers)]
        # Handed to the embedding actors, which wait on it before embedding anything.
        self.ready = [w.ready.remote() for w in self.actors]

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        for writer in self.actors:
            try:
                ray.get(writer.close.remote())
            except Exception as exc:  # never let cleanup hide the error that got us here
                log.warning("closing a sink writer failed: %s", short(exc))
            finally:
                ray.kill(writer)

    def wait_ready(self) -> None:
        """Raise the first writer's reason for refusing the sink, if one did."""
        errors = [error for error in ray.get(self.ready) if error is not None]
        if errors:
            raise errors[0] if isinstance(errors[0], SinkError) else SinkError(str(errors[0]))

    def write_all(self, blocks: Iterator[BlockRef]) -> Iterator[WriteOutcome]:
        """Write every block; yield each one's outcome as it is done."""
        if self.local is not None:
            for block in blocks:
                table = block.fetch()
                metrics.gauge("colray_rows_in_flight", table.num_rows)
                yield self.local.write(table)
                metrics.gauge("colray_rows_in_flight", 0)
            return
        yield from self._write_remote(blocks)

    def _write_remote(self, blocks: Iterator[BlockRef]) -> Iterator[WriteOutcome]:
        """Each block to the least busy writer actor, a bounded number in flight; the data
        goes from the object store to the actor and never passes the driver."""
        in_flight: dict[Any, tuple[int, int]] = {}  # the call -> (writer, rows)
        load = [0] * len(self.actors)
        for block in blocks:
            while len(in_flight) >= WRITES_IN_FLIGHT_PER_WRITER * len(self.actors):
                yield self._collect_one(in_flight, load)
            target = min(range(len(self.actors)), key=load.__getitem__)
            call = self.actors[target].write.remote(block.ref, block.start, block.end)
            in_flight[call] = (target, block.rows or 0)
            load[target] += 1
            metrics.gauge("colray_rows_in_flight", sum(rows for _, rows in in_flight.values()))
        while in_flight:
            yield self._collect_one(in_flight, load)

    @staticmethod
    def _collect_one(in_flight: dict[Any, tuple[int, int]], load: list[int]) -> WriteOutcome:
        done, _ = ray.wait(list(in_flight), num_returns=1)
        load[in_flight.pop(done[0])[0]] -= 1
        metrics.gauge("colray_rows_in_flight", sum(rows for _, rows in in_flight.values()))
        outcome: WriteOutcome = ray.get(done[0])
        return outcome
