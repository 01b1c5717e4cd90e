"""Embedded blocks to points in a sink: size-bounded batches, bad points isolated, dead letters.

Plain Python under the writer actor, so its behaviour under faults is testable without Ray.
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

from colray.config import SinkConfig
from colray.sink import Point, Sink, VectorSpec, json_safe
from colray.sources import ERROR, HASH, ID, KEY, LOCATION, READ_SECONDS

DECODE_SECONDS = "_colray_decode_s"
EMBED_SECONDS = "_colray_embed_s"
TRUNCATED = "_colray_truncated"  # the text was longer than the model reads
STAGE_COLUMNS = {"read": READ_SECONDS, "decode": DECODE_SECONDS, "embed": EMBED_SECONDS}
SKIPPED = "skip"  # the stage of rows a resumed run finds already written
UNCHANGED = "skip: Unchanged:"  # ... and of rows an incremental run finds stored as they are

DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("point_id", pa.string()),
        ("row_key", pa.string()),
        ("source_location", pa.string()),
        ("stage", pa.string()),
        ("error_class", pa.string()),
        ("error", pa.string()),
    ]
)
# Qdrant refuses a multivector of more floats than this (HTTP 422).
MAX_FLOATS_PER_MULTIVECTOR = 1_048_576
# Serialized size per float: JSON for REST (measured ~20.7 bytes), protobuf for gRPC.
BYTES_PER_FLOAT = {"rest": 21, "grpc": 5}


def vectors_column(name: str) -> str:
    """Column carrying a named vector's float32 bytes, row-major (n_vectors, dim)."""
    return f"_colray_vectors:{name}"


def count_column(name: str) -> str:
    return f"_colray_num_vectors:{name}"


def reason(stage: str, error_class: str, message: str) -> str:
    """A row's error as it travels in the error column: `stage: ErrorClass: message`."""
    return f"{stage}: {error_class}: {message}"


def short(exc: BaseException, limit: int = 500) -> str:
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


@dataclass
class WriteOutcome:
    rows: int
    points_written: int
    skipped: int  # finished by an interrupted run of this job
    unchanged: int  # stored with the same content hash (incremental runs)
    duplicates: int  # rows whose id an earlier row of this run already wrote
    dead_letters: list[dict[str, str | None]]
    seconds: float
    upstream_seconds: dict[str, float] = field(default_factory=dict)  # read, embed time
    written_ids: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)  # both kinds of skip


class BlockWriter:
    """Writes blocks of embedded rows as points; one per writer actor."""

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
        transport = "grpc" if cfg.prefer_grpc else "rest"
        self.bytes_per_float = BYTES_PER_FLOAT[transport]
        self.max_request_bytes = int(cfg.max_request_mb * 2**20)

    def write(self, table: pa.Table) -> WriteOutcome:
        began = time.perf_counter()
        columns = {
            name: table.column(name).to_pylist() for name in (ID, KEY, LOCATION, ERROR, HASH)
        }
        payloads = {c: table.column(c).to_pylist() for c in self.payload_columns}
        blobs = {s.name: table.column(vectors_column(s.name)).to_pylist() for s in self.layout}
        counts = {s.name: table.column(count_column(s.name)).to_pylist() for s in self.layout}
        truncated = (
            table.column(TRUNCATED).to_pylist()
            if TRUNCATED in table.column_names
            else [False] * table.num_rows
        )
        dead: list[dict[str, str | None]] = []
        points: list[Point] = []
        row_of: dict[str, int] = {}
        skipped = unchanged = duplicates = 0
        skipped_ids: list[str] = []
        for i in range(table.num_rows):
            error = columns[ERROR][i]
            if error is not None:
                if error.startswith(SKIPPED + ":"):
                    unchanged += error.startswith(UNCHANGED)
                    skipped += not error.startswith(UNCHANGED)
                    skipped_ids.append(columns[ID][i])
                else:
                    dead.append(dead_letter(columns, i, error))
                continue
            vectors = {
                s.name: np.frombuffer(blobs[s.name][i], np.float32).reshape(
                    counts[s.name][i], s.dim
                )
                for s in self.layout
            }
            too_big = [n for n, v in vectors.items() if v.size > MAX_FLOATS_PER_MULTIVECTOR]
            if too_big:
                size = vectors[too_big[0]].size
                message = (
                    f"vector {too_big[0]!r} has {size} floats, more than Qdrant's "
                    f"{MAX_FLOATS_PER_MULTIVECTOR} per multivector"
                )
                dead.append(
                    dead_letter(columns, i, reason("write", "MultivectorTooLarge", message))
                )
                continue
            payload = {c: json_safe(payloads[c][i]) for c in self.payload_columns}
            payload["_colray"] = {
                "key": columns[KEY][i],
                "source": self.source_name,
                "hash": columns[HASH][i],
            }
            if truncated[i]:
                payload["_colray"]["truncated"] = True
            point_id = columns[ID][i]
            if point_id in self.seen or point_id in row_of:
                duplicates += 1  # same id again: this later row overwrites the earlier one
            row_of[point_id] = i
            points.append(Point(point_id, vectors, payload))
        written: list[str] = []
        for batch in self._batches(points):
            failed = dict(self._write_isolating(batch))
            written.extend(p.id for p in batch if p.id not in failed)
            dead.extend(dead_letter(columns, row_of[pid], why) for pid, why in failed.items())
        self.seen.update(written)
        upstream = {
            stage: pc.sum(table.column(column)).as_py() or 0.0
            for stage, column in STAGE_COLUMNS.items()
            if column in table.column_names
        }
        return WriteOutcome(
            rows=table.num_rows,
            points_written=len(written),
            skipped=skipped,
            unchanged=unchanged,
            duplicates=duplicates,
            dead_letters=dead,
            seconds=time.perf_counter() - began,
            upstream_seconds=upstream,
            written_ids=written,
            skipped_ids=skipped_ids,
        )

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

    def _write_isolating(self, points: list[Point]) -> list[tuple[str, str]]:
        """Write; on a non-transient rejection split the batch until the bad points are alone."""
        if not points:
            return []
        try:
            self.sink.write(points)
            return []
        except Exception as exc:
            from colray.sink.qdrant import is_transient

            if is_transient(exc):
                raise  # retries are spent: the run fails rather than drop these rows
            if len(points) == 1:
                return [(points[0].id, reason("write", type(exc).__name__, short(exc)))]
            half = len(points) // 2
            return self._write_isolating(points[:half]) + self._write_isolating(points[half:])


def dead_letter(columns: dict[str, list[Any]], i: int, why: str) -> dict[str, str | None]:
    stage, _, rest = why.partition(": ")
    error_class, _, message = rest.partition(": ")
    return {
        "point_id": columns[ID][i],
        "row_key": columns[KEY][i],
        "source_location": columns[LOCATION][i],
        "stage": stage,
        "error_class": error_class,
        "error": message,
    }
