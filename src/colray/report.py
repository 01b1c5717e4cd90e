"""The run's ledger: what became of every row (counts, dead-letter file, resume marks, deletions),
the JSON report it ends in, and the checks that the counts add up.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from colray import metrics
from colray.errors import LostRowsError
from colray.job import Job
from colray.points import WriteOutcome
from colray.resume import ResumeLog
from colray.rows import DEAD_LETTER_SCHEMA, READ, DeadLetter, dead_letter_key, retryable, short
from colray.sink import FinalizeResult, Sink
from colray.sources import SkipRules

log = logging.getLogger("colray")
T = TypeVar("T")

PUBLISH_EVERY_S = 5.0  # how often a run tells on_progress (cluster jobs print it to their log)
RATE_WINDOW_S = 60.0  # rows/s is over this window

# The exit codes `colray` ends a run with (the CLI's table in README: Exit codes and failures).
EXIT_FAILED, EXIT_TOO_MANY_FAILED, EXIT_INTERRUPTED = 1, 3, 130


def colray_version() -> str:
    import colray

    return colray.__version__


class TooManyFailuresError(RuntimeError):
    """The run finished, but more rows were dead-lettered than run.max_failed_fraction allows."""

    def __init__(self, report: RunReport, limit: float):
        self.report = report
        top = ", ".join(f"{k} ({n})" for k, n in list(report.dead_letter_reasons.items())[:5])
        super().__init__(
            f"{report.dead_lettered} of {report.rows_read} rows were dead-lettered "
            f"({report.dead_lettered / report.rows_read:.1%}, more than "
            f"run.max_failed_fraction={limit:g}); most common: {top}. "
            f"See {report.dead_letter_path}"
        )


@dataclass(frozen=True)
class RunOrigin:
    """How a run was asked for: the config file and --set overrides, and the command."""

    config: str | None = None
    overrides: tuple[str, ...] = ()
    command: str = "ingest"  # ingest | reindex


@dataclass
class RunReport:
    run_id: str
    started_at: str
    colray_version: str = ""
    config: str | None = None  # the config file, when the job came from one
    overrides: list[str] = field(default_factory=list)
    mode: str = "ingest"  # ingest | ingest --incremental | reindex | reindex --incremental
    executor: str = "ray"  # ray | local (every stage in the driver's process): run.executor
    exit_code: int | None = None  # what `colray` exits with for this run
    # succeeded | too_many_dead_letters | failed | interrupted; with `error` for the last two.
    outcome: str = "running"
    error: str | None = None
    finished_at: str = ""
    duration_s: float = 0.0
    source: str = ""
    model: str = ""
    sink: dict[str, Any] = field(default_factory=dict)
    # Documents (PDFs): the rows are their pages. rows_in_source grows as documents are split
    # (each document's pages, or one row for a document that could not be opened), and every
    # document of the source must have been read.
    documents_in_source: int | None = None
    documents_read: int | None = None
    rows_in_source: int = 0
    rows_read: int = 0
    points_written: int = 0
    dead_lettered: int = 0
    # Of the dead letters: rows whose writes ran out of retries. The resume state keeps them
    # unfinished, so running the job again retries exactly these.
    retryable_dead_letters: int = 0
    skipped_existing: int = 0
    duplicate_ids: int = 0  # rows whose id an earlier row of the run had (the later one wins)
    write_retries: int = 0  # sink calls retried while writing (timeouts, 429, 5xx, connections)
    # Files whose footer could not be read: dead-lettered whole, rows unknown, not in rows_*.
    unreadable_files: int = 0
    points_in_store: int = 0
    # Seconds from the start until the first embedded block reached a writer: validation,
    # model loads and actor start-up, the fixed cost a small job mostly consists of.
    first_block_s: float | None = None
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    stages_s: dict[str, float] = field(default_factory=dict)
    rows_per_s: float = 0.0
    finalize: dict[str, Any] = field(default_factory=dict)
    # Incremental runs: rows unchanged (skipped), points updated, added and deleted.
    incremental: dict[str, int] | None = None
    # Rebuilds: the alias or pointer, the version it now serves, and the versions dropped.
    reindex: dict[str, Any] | None = None
    dead_letter_path: str = ""
    report_path: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self) -> None:
        path = Path(self.report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())

    def accounted(self) -> int:
        """Rows that ended as a point, a dead letter or a skip."""
        unchanged = self.incremental["unchanged"] if self.incremental else 0
        return self.points_written + self.dead_lettered + self.skipped_existing + unchanged


class Ledger:
    """Keeps the run's books while blocks are written; closing it flushes the dead letters and
    the resume log whatever happened."""

    def __init__(
        self,
        job: Job,
        report_path: str | Path | None,
        *,
        started: float,
        origin: RunOrigin | None = None,
        incremental: bool = False,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.job = job
        self.started = started  # perf_counter() when the run began, before the job was checked
        now = dt.datetime.now(dt.UTC)
        run_id = now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        self.run_dir = Path(job.settings.run.dir) / run_id
        self.report = RunReport(
            run_id=run_id,
            started_at=now.isoformat(),
            source=job.source.name,
            model=job.model_names,
            sink=job.settings.sink.describe(),
            rows_in_source=job.source.num_rows,
            dead_letter_path=str(self.run_dir / "dead_letters.parquet"),
            report_path=str(report_path or self.run_dir / "report.json"),
        )
        origin = origin or RunOrigin()
        self.report.colray_version = colray_version()
        self.report.config, self.report.overrides = origin.config, list(origin.overrides)
        self.report.mode = origin.command + (" --incremental" if incremental else "")
        self.report.executor = "local" if job.in_process else "ray"
        if job.settings.source.documents:
            self.report.documents_in_source, self.report.documents_read = job.source.num_rows, 0
            self.report.rows_in_source = 0
        self.resume = ResumeLog(job.settings.run.dir, job.fingerprint)
        self.finished = self.resume.load()
        self.stored: dict[str, str | None] | None = None  # incremental runs: id -> hash
        self.seen: set[str] = set()  # ... and the ids of every row read
        self.reasons: collections.Counter[str] = collections.Counter()
        self.stage_s: collections.Counter[str] = collections.Counter()
        self._dead_out: pq.ParquetWriter | None = None
        self._bar: Any = None
        self.begun = False  # past the checks: a failure from here on leaves a report
        self.on_progress = on_progress
        self._published = 0.0
        self._history: collections.deque[tuple[float, int]] = collections.deque([(started, 0)])

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._dead_out is not None:
            self._dead_out.close()
        self.resume.close()
        if error is not None and self.begun:
            self.save_failed(error)

    def save_failed(self, error: BaseException) -> None:
        """The report of a run that stopped: what was done so far, and why it stopped."""
        interrupted = isinstance(error, KeyboardInterrupt)
        self.report.outcome = "interrupted" if interrupted else "failed"
        self.report.exit_code = EXIT_INTERRUPTED if interrupted else EXIT_FAILED
        self.report.error = (
            "interrupted" if interrupted else f"{type(error).__name__}: {short(error)}"
        )
        self._summarise()
        self.report.save()
        error.colray_report = self.report  # type: ignore[attr-defined]  # for the CLI

    def track_changes(self, stored: dict[str, str | None]) -> None:
        """An incremental run: compare with what the store holds."""
        self.stored = stored
        self.report.incremental = {"unchanged": 0, "updated": 0, "added": 0, "deleted": 0}

    def skip_rules(self) -> SkipRules:
        """What the reader passes over: rows finished earlier, rows stored unchanged (in
        Ray's object store once, for every read task, unless the job runs in this process)."""
        share = (lambda value: value) if self.job.in_process else ray.put
        return SkipRules(
            salt=self.job.salt,
            done=share(self.finished) if self.finished else None,
            stored=share(self.stored) if self.stored else None,
        )

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Time a stage the driver runs itself."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.stage_s[stage] += time.perf_counter() - began

    def begin_writing(self) -> None:
        """From here on the run leaves files: the dead letters, then the report."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._dead_out = pq.ParquetWriter(self.report.dead_letter_path, DEAD_LETTER_SCHEMA)
        unit = "page" if self.report.documents_in_source is not None else "row"
        self._bar = tqdm(total=self.report.rows_in_source or None, unit=unit, desc="written",
                         disable=not self.job.settings.run.progress)  # fmt: skip
        unreadable = self.job.source.unreadable
        if unreadable:
            self.report.unreadable_files = len(unreadable)
            self._write_dead([
                {"point_id": None, "row_key": None, "source_location": relative, "stage": READ,
                 "error_class": "UnreadableFile", "error": why[:1000]}
                for relative, why in unreadable
            ], count=False)  # fmt: skip
            log.warning(
                "%d source file(s) could not be read; see the dead letters", len(unreadable)
            )

    def timing_first(self, blocks: Iterator[T]) -> Iterator[T]:
        """`blocks`, noting when the first one arrived."""
        for block in blocks:
            if self.report.first_block_s is None:
                self.report.first_block_s = round(time.perf_counter() - self.started, 3)
            yield block

    def record(self, outcome: WriteOutcome) -> None:
        """One block's outcome: counted, its dead letters kept, its rows marked finished."""
        report = self.report
        if report.documents_read is not None:
            report.documents_read += outcome.documents
            report.rows_in_source += outcome.document_rows
            if self._bar is not None:
                self._bar.total = max(report.rows_in_source, self._bar.total or 0)
        report.rows_read += outcome.rows
        report.points_written += outcome.points_written
        report.skipped_existing += outcome.skipped
        report.duplicate_ids += outcome.duplicates
        report.write_retries += outcome.retries
        self.stage_s.update({**outcome.upstream_seconds, "write": outcome.seconds})
        self._write_dead(outcome.dead_letters)
        dead_ids = [d["point_id"] for d in outcome.dead_letters if d["point_id"]]
        if report.incremental is not None and self.stored is not None:
            updated = sum(point_id in self.stored for point_id in outcome.written_ids)
            report.incremental["unchanged"] += outcome.unchanged
            report.incremental["updated"] += updated
            report.incremental["added"] += outcome.points_written - updated
            self.seen.update(outcome.written_ids, outcome.skipped_ids, dead_ids)
        if self._bar is not None:
            self._bar.update(outcome.rows)
        # Only now, with the points in the store, may a restarted run skip these rows; not
        # the rows whose writes ran out of retries, which the next run should try again.
        final = [d["point_id"] for d in outcome.dead_letters if d["point_id"] and not retryable(d)]
        self.resume.record(outcome.written_ids + final)
        self._count(outcome)
        self.publish("loading")

    @staticmethod
    def _count(outcome: WriteOutcome) -> None:
        metrics.count("colray_rows_read", outcome.rows)
        metrics.count("colray_points_written", outcome.points_written)
        metrics.count("colray_rows_skipped", outcome.skipped, why="done")
        metrics.count("colray_rows_skipped", outcome.unchanged, why="unchanged")
        for (stage, error_class), n in collections.Counter(
            (d["stage"] or "", d["error_class"] or "") for d in outcome.dead_letters
        ).items():
            metrics.count("colray_dead_letters", n, stage=stage, error_class=error_class)

    def publish(self, phase: str, *, force: bool = False, **extra: Any) -> None:
        """Tell `on_progress` how far the run is, at most every PUBLISH_EVERY_S seconds."""
        now = time.perf_counter()
        written = self.report.points_written + self.report.skipped_existing
        self._history.append((now, written))
        while self._history and now - self._history[0][0] > RATE_WINDOW_S:
            self._history.popleft()
        if self.on_progress is None or (not force and now - self._published < PUBLISH_EVERY_S):
            return
        self._published = now
        self.on_progress(self.progress(phase, **extra))

    def progress(self, phase: str, **extra: Any) -> dict[str, Any]:
        """How far the run is: phase, rows done of the total, rate over the last minute, ETA."""
        report = self.report
        done = report.points_written + report.skipped_existing + report.dead_lettered
        (first_t, first_n), (last_t, last_n) = self._history[0], self._history[-1]
        rate = (last_n - first_n) / (last_t - first_t) if last_t > first_t else 0.0
        total = report.rows_in_source
        left = max(total - done, 0)
        return {
            "run_id": report.run_id, "phase": phase, "rows_done": done, "rows_total": total,
            "points_written": report.points_written, "dead_lettered": report.dead_lettered,
            "top_dead_letter_reasons": dict(self.reasons.most_common(3)),
            "rows_per_s": round(rate, 2), "eta_s": round(left / rate) if rate > 0 else None,
            "elapsed_s": round(self.elapsed(), 1), **extra,
        }  # fmt: skip

    def _write_dead(self, entries: list[DeadLetter], *, count: bool = True) -> None:
        if not entries:
            return
        assert self._dead_out is not None, "begin_writing() first"
        self._dead_out.write_table(pa.Table.from_pylist(entries, DEAD_LETTER_SCHEMA))
        if count:
            self.report.dead_lettered += len(entries)
            self.report.retryable_dead_letters += sum(map(retryable, entries))
            self.reasons.update(dead_letter_key(d) for d in entries)

    def delete_vanished(self, sink: Sink) -> None:
        """Incremental runs: delete the points whose rows left the source."""
        incremental = self.report.incremental
        if incremental is None or self.stored is None:
            return
        vanished = [point_id for point_id in self.stored if point_id not in self.seen]
        if vanished and (
            self.report.unreadable_files or self.reasons.get(f"{READ}: UnreadableData")
        ):
            # Rows of an unreadable file are unknown: their points must not be taken for gone.
            log.warning(
                "%d stored points have no row in what could be read, but part of the source "
                "was unreadable: nothing deleted",
                len(vanished),
            )
            vanished = []
        sink.delete(vanished)
        incremental["deleted"] = len(vanished)

    def finalized(self, result: FinalizeResult, points_in_store: int) -> None:
        self.report.finalize = asdict(result)
        self.report.points_in_store = points_in_store

    def _summarise(self) -> None:
        report = self.report
        report.dead_letter_reasons = dict(self.reasons.most_common())
        report.stages_s = {stage: round(seconds, 3) for stage, seconds in self.stage_s.items()}
        report.duration_s = round(time.perf_counter() - self.started, 3)
        report.rows_per_s = (
            round(report.rows_read / report.duration_s, 2) if report.duration_s else 0.0
        )
        report.finished_at = dt.datetime.now(dt.UTC).isoformat()

    def conclude(self) -> RunReport:
        """Save the report, then check it: every row accounted for, few enough dead letters."""
        report = self.report
        limit = self.job.settings.run.max_failed_fraction
        failed = report.dead_lettered / report.rows_read if report.rows_read else 0.0
        report.outcome = "too_many_dead_letters" if failed > limit else "succeeded"
        report.exit_code = EXIT_TOO_MANY_FAILED if failed > limit else 0
        lost = (
            report.rows_read != report.rows_in_source
            or report.rows_read != report.accounted()
            or report.documents_read != report.documents_in_source
        )
        if lost:
            report.outcome, report.error = "failed", "LostRowsError: rows do not add up"
            report.exit_code = EXIT_FAILED
        self._summarise()
        report.save()
        if lost:
            documents = (
                f"documents: source {report.documents_in_source}, read {report.documents_read}; "
                if report.documents_in_source is not None
                else ""
            )
            raise LostRowsError(
                f"rows do not add up: {documents}source {report.rows_in_source}, read {report.rows_read}, "
                f"written {report.points_written}, dead-lettered {report.dead_lettered}, "
                f"skipped {report.skipped_existing}, unchanged "
                f"{report.incremental['unchanged'] if report.incremental else 0}"
            )
        if report.retryable_dead_letters:
            log.warning(
                "%d rows could not be written (transient failures outlasted the retries); "
                "running the job again retries exactly those",
                report.retryable_dead_letters,
            )
        else:
            self.resume.clear()
        if failed > limit:
            raise TooManyFailuresError(report, limit)
        return report
