"""Embedded rows to points in a sink: size-bounded batches, bad points isolated, dead letters.

Plain Python under the writer actor (or the driver), so its behaviour under faults is testable
without Ray. Reads only the row contract's columns (`colray.rows`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from colray import metrics
from colray.config import SinkConfig
from colray.errors import SinkUnavailable
from colray.layout import VectorSpec
from colray.rows import (
    DOCUMENT_KEY,
    DOCUMENT_START,
    ERROR,
    HASH,
    ID,
    KEY,
    LOCATION,
    NO_TEXT,
    PAGE_COUNT,
    PAGE_NUMBER,
    RETRIES_EXHAUSTED,
    STAGE_SECONDS,
    TRUNCATED,
    UNCHANGED,
    WRITE,
    DeadLetter,
    Reason,
    column_list,
    count_column,
    dead_letter,
    reason,
    short,
    vectors_column,
)
from colray.sink import Point, RetriesExhausted, Sink, json_safe

# Qdrant refuses a multivector of more floats than this (HTTP 422).
MAX_FLOATS_PER_MULTIVECTOR = 1_048_576
# Serialized size per float: JSON for REST (measured ~20.7 bytes), protobuf for gRPC.
BYTES_PER_FLOAT = {"rest": 21, "grpc": 5}


@dataclass
class WriteOutcome:
    """What became of one block's rows."""

    rows: int
    points_written: int = 0
    skipped: int = 0  # finished by an interrupted run of this job
    unchanged: int = 0  # stored with the same content hash (incremental runs)
    duplicates: int = 0  # rows whose id an earlier row of this run already wrote
    retries: int = 0  # sink calls retried while writing the block
    dead_letters: list[DeadLetter] = field(default_factory=list)
    seconds: float = 0.0
    upstream_seconds: dict[str, float] = field(default_factory=dict)  # read, embed time
    written_ids: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)  # both kinds of skip
    # Documents: how many began in this block, and how many rows they have in all (their
    # pages, or one for a document that could not be opened).
    documents: int = 0
    document_rows: int = 0


class _Rows:
    """One block's columns as Python lists, read once."""

    def __init__(self, table: pa.Table, layout: list[VectorSpec], payload_columns: list[str]):
        self.ids = table.column(ID).to_pylist()
        self.keys = table.column(KEY).to_pylist()
        self.locations = table.column(LOCATION).to_pylist()
        self.errors = table.column(ERROR).to_pylist()
        self.hashes = table.column(HASH).to_pylist()
        self.truncated = column_list(table, TRUNCATED, False)
        self.payloads = {c: table.column(c).to_pylist() for c in payload_columns}
        self.blobs = {s.name: table.column(vectors_column(s.name)).to_pylist() for s in layout}
        self.counts = {s.name: table.column(count_column(s.name)).to_pylist() for s in layout}
        # Documents' page rows: which document and page, and (DOCUMENT_START rows) how many.
        self.documents = column_list(table, DOCUMENT_KEY)
        self.pages = column_list(table, PAGE_NUMBER)
        self.page_counts = column_list(table, PAGE_COUNT)
        self.starts = column_list(table, DOCUMENT_START, False)
        self.no_text = column_list(table, NO_TEXT, False)

    def dead(self, i: int, why: Reason | str) -> DeadLetter:
        return dead_letter(self.ids[i], self.keys[i], self.locations[i], why)


class BlockWriter:
    """Writes blocks of embedded rows as points; one per writer actor (or the driver)."""

    def __init__(
        self,
        sink: Sink,
        cfg: SinkConfig,
        layout: list[VectorSpec],
        payload_columns: list[str],
        source_name: str,
    ):
        self.sink = sink
        self.cfg = cfg
        self.layout = layout
        self.payload_columns = payload_columns
        self.source_name = source_name
        self.seen: set[str] = set()
        self.failed_batches = 0  # in a row, each out of retries
        self.bytes_per_float = BYTES_PER_FLOAT["grpc" if cfg.prefer_grpc else "rest"]
        self.max_request_bytes = int(cfg.max_request_mb * 2**20)

    def write(self, table: pa.Table) -> WriteOutcome:
        """The block's rows as points; raises SinkUnavailable once sink.max_failed_batches
        batches in a row ran out of retries (the sink is gone, not some rows bad)."""
        began, retried_before = time.perf_counter(), metrics.retries_so_far()
        rows = _Rows(table, self.layout, self.payload_columns)
        outcome = WriteOutcome(rows=table.num_rows)
        starts = [
            count for count, start in zip(rows.page_counts, rows.starts, strict=True) if start
        ]
        outcome.documents = len(starts)
        outcome.document_rows = sum(max(count or 0, 1) for count in starts)
        points, row_of = self._points(rows, outcome)
        for batch in self._batches(points):
            failed = dict(self._write_batch(batch))
            outcome.written_ids.extend(p.id for p in batch if p.id not in failed)
            outcome.dead_letters.extend(rows.dead(row_of[pid], why) for pid, why in failed.items())
        outcome.points_written = len(outcome.written_ids)
        self.seen.update(outcome.written_ids)
        outcome.upstream_seconds = {
            stage: pc.sum(table.column(column)).as_py() or 0.0
            for stage, column in STAGE_SECONDS.items()
            if column in table.column_names
        }
        outcome.seconds = time.perf_counter() - began
        outcome.retries = metrics.retries_so_far() - retried_before
        return outcome

    def _points(self, rows: _Rows, outcome: WriteOutcome) -> tuple[list[Point], dict[str, int]]:
        """The rows that become points; skips and dead letters are counted on `outcome`."""
        points: list[Point] = []
        row_of: dict[str, int] = {}
        for i, error in enumerate(rows.errors):
            if error is not None:
                why = Reason.decode(error)
                if why.is_skip:
                    unchanged = why.error_class == UNCHANGED.error_class
                    outcome.unchanged += unchanged
                    outcome.skipped += not unchanged
                    outcome.skipped_ids.append(rows.ids[i])
                else:
                    outcome.dead_letters.append(rows.dead(i, why))
                continue
            # A vector with no rows is absent (a page without a text layer has no text vector).
            vectors = {s.name: self._vector(rows, s, i) for s in self.layout
                       if rows.counts[s.name][i]}  # fmt: skip
            too_big = next(
                (s.name for s in self.layout
                 if s.multivector and s.name in vectors
                 and vectors[s.name].size > MAX_FLOATS_PER_MULTIVECTOR),
                None,
            )  # fmt: skip
            if too_big is not None:
                message = (
                    f"vector {too_big!r} has {vectors[too_big].size} floats, more than Qdrant's "
                    f"{MAX_FLOATS_PER_MULTIVECTOR} per multivector"
                )
                outcome.dead_letters.append(
                    rows.dead(i, reason(WRITE, "MultivectorTooLarge", message))
                )
                continue
            point_id = rows.ids[i]
            if point_id in self.seen or point_id in row_of:
                outcome.duplicates += 1  # same id again: this later row overwrites the earlier one
            row_of[point_id] = i
            points.append(Point(point_id, vectors, self._payload(rows, i)))
        return points, row_of

    @staticmethod
    def _vector(rows: _Rows, spec: VectorSpec, i: int) -> np.ndarray:
        """A row's named vector: an (n, dim) matrix, or a (dim,) dense vector."""
        array = np.frombuffer(rows.blobs[spec.name][i], np.float32)
        if not spec.multivector:
            return array.reshape(spec.dim)
        return array.reshape(rows.counts[spec.name][i], spec.dim)

    def _payload(self, rows: _Rows, i: int) -> dict[str, Any]:
        payload = {c: json_safe(rows.payloads[c][i]) for c in self.payload_columns}
        payload["_colray"] = {
            "key": rows.keys[i],
            "source": self.source_name,
            "hash": rows.hashes[i],
        }
        if rows.truncated[i]:
            payload["_colray"]["truncated"] = True
        if rows.pages[i] is not None:  # a document's page
            payload.update(
                document=rows.documents[i], page=rows.pages[i], page_count=rows.page_counts[i]
            )
            # Where the page came from (file, or parquet row, and page): a hit leads back to it.
            payload["_colray"]["location"] = rows.locations[i]
            if rows.no_text[i]:
                payload["_colray"]["text_layer"] = False
        return payload

    def _batches(self, points: list[Point]) -> Iterator[list[Point]]:
        """Cut by count and by estimated request size, so no request exceeds the server's limit."""
        batch: list[Point] = []
        size = 0
        for point in points:
            floats = sum(v.size for v in point.vectors.values())
            estimate = floats * self.bytes_per_float + len(json.dumps(point.payload)) + 64
            if batch and (
                len(batch) >= self.cfg.batch_size or size + estimate > self.max_request_bytes
            ):
                yield batch
                batch, size = [], 0
            batch.append(point)
            size += estimate
        if batch:
            yield batch

    def _write_batch(self, points: list[Point]) -> list[tuple[str, str]]:
        """One request's points; those that could not be written, with why."""
        began = time.perf_counter()
        try:
            failed = self._write_isolating(points)
            metrics.observe("colray_write_batch_seconds", time.perf_counter() - began)
        except RetriesExhausted as exc:
            # Transient failures that outlasted the retries: these rows are dead letters of
            # this run only (the resume state does not mark them done, so a rerun retries them).
            self.failed_batches += 1
            if self.failed_batches >= self.cfg.max_failed_batches:
                raise SinkUnavailable(
                    f"{self.failed_batches} batches in a row could not be written after "
                    f"{self.cfg.retry_attempts} attempts each; last: {exc}"
                ) from None
            return [(p.id, reason(WRITE, RETRIES_EXHAUSTED, str(exc))) for p in points]
        self.failed_batches = 0
        return failed

    def _write_isolating(self, points: list[Point]) -> list[tuple[str, str]]:
        """Write; on a rejection no retry changes, split the batch until the bad points are alone."""
        if not points:
            return []
        try:
            self.sink.write(points)
            return []
        except RetriesExhausted:
            raise
        except Exception as exc:
            if len(points) == 1:
                return [(points[0].id, reason(WRITE, type(exc).__name__, short(exc)))]
            half = len(points) // 2
            return self._write_isolating(points[:half]) + self._write_isolating(points[half:])
