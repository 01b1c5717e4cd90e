"""A Ray Data sink for multivectors users already have: `ds.write_datasink(MultivectorDatasink(...))`
with colray's writer behind it (layout check, byte-bounded batches, bad points isolated, retries).

Write tasks write a Qdrant server directly; Edge and local mode, whose store one process holds,
are written by one store-holding actor on the driver's node that the write tasks hand blocks to.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink, WriteResult

from colray.config import SinkConfig
from colray.layout import VectorSpec
from colray.points import BlockWriter, WriteOutcome
from colray.rows import (
    DEAD_LETTER_SCHEMA,
    ERROR,
    HASH,
    ID,
    KEY,
    LOCATION,
    READ,
    count_column,
    point_id,
    reason,
    vectors_column,
)
from colray.sink import Sink, open_prepared_sink, open_sink

__all__ = ["MultivectorDatasink", "merge_outcomes"]


class MultivectorDatasink(Datasink[WriteOutcome]):
    """Writes rows of precomputed multivectors as points into a Qdrant collection or Edge store.

    Each row carries its point id in `id_column` (a UUID string or a non-negative integer, used
    as is) or a key in `key_column` (any value; the id is uuid5 of `source_name` and the key, as
    colray's own jobs make them), and for each named vector of `vectors` a column of that name
    holding an (n, dim) matrix (a numpy array or lists of lists). `payload_columns` are copied
    into the payload. A row that cannot become a point (no id, a missing, empty, mis-sized or
    non-finite matrix, a point the server refuses) is a dead letter in `outcome`, written to
    `dead_letter_path` when given; the others are written. The store's layout is created or
    checked before any write, indexing is off during the load and back on at the end.
    """

    def __init__(
        self,
        sink: SinkConfig | Mapping[str, Any],
        vectors: Mapping[str, int | VectorSpec],
        *,
        id_column: str | None = None,
        key_column: str | None = None,
        source_name: str = "datasink",
        payload_columns: Sequence[str] = (),
        dead_letter_path: str | Path | None = None,
    ):
        if (id_column is None) == (key_column is None):
            raise ValueError("give exactly one of id_column (point ids) or key_column (keys)")
        self.cfg = sink if isinstance(sink, SinkConfig) else SinkConfig(**sink)
        self.layout = [
            spec if isinstance(spec, VectorSpec) else VectorSpec(name, int(spec))
            for name, spec in vectors.items()
        ]
        self.id_column, self.key_column = id_column, key_column
        self.source_name = source_name
        self.payload_columns = list(payload_columns)
        self.dead_letter_path = Path(dead_letter_path) if dead_letter_path else None
        # Edge and local mode: one actor holds the store, found by name from the write tasks.
        self.local = self.cfg.single_process
        self.holder_name = f"colray-store-{uuid.uuid4().hex}"
        self._holder: Any = None
        self.outcome: WriteOutcome | None = None  # set once the write completed
        self.finalize: dict[str, Any] = {}
        self.points_in_store = 0

    def on_write_start(self, schema: pa.Schema | None = None) -> None:
        if schema is not None:
            wanted = [c for c in (self.id_column, self.key_column) if c] + self.payload_columns
            missing = [c for c in wanted + [s.name for s in self.layout] if c not in schema.names]
            if missing:
                raise ValueError(f"the dataset has no column(s) {missing} (has {schema.names})")
        if self.local:
            holder = _StoreHolder.options(  # type: ignore[attr-defined]
                name=self.holder_name,
                scheduling_strategy=_this_node(),
            ).remote(self.cfg, self.layout, self.payload_columns, self.source_name)
            ray.get(holder.ready.remote())  # the layout is checked before any write
            self._holder = holder  # a named actor still ends when its last handle goes
        else:
            open_prepared_sink(self.cfg, self.layout).close()

    def write(self, blocks: Iterable[Block], ctx: Any) -> WriteOutcome:
        tables = (self._as_rows(BlockAccessor.for_block(b).to_arrow()) for b in blocks)
        if self.local:
            holder = ray.get_actor(self.holder_name)
            return merge_outcomes(ray.get([holder.write.remote(t) for t in tables]))
        sink = open_sink(self.cfg, self.layout)
        try:
            writer = BlockWriter(
                sink, self.cfg, self.layout, self.payload_columns, self.source_name
            )
            return merge_outcomes([writer.write(t) for t in tables])
        finally:
            sink.close()

    def on_write_complete(self, write_result: WriteResult[WriteOutcome]) -> None:
        self.outcome = merge_outcomes(write_result.write_returns)
        if self.dead_letter_path is not None:
            self.dead_letter_path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                pa.Table.from_pylist(self.outcome.dead_letters, DEAD_LETTER_SCHEMA),
                self.dead_letter_path,
            )
        if self.local:
            holder = ray.get_actor(self.holder_name)
            self.finalize, self.points_in_store = ray.get(holder.finalize.remote())
            ray.kill(holder)
            self._holder = None
            return
        sink = open_sink(self.cfg, self.layout)
        try:
            self.finalize = asdict(sink.finalize())
            self.points_in_store = sink.count()
        finally:
            sink.close()

    def on_write_failed(self, error: Exception) -> None:
        if self.local:  # release the store for whoever opens it next
            with contextlib.suppress(ValueError):
                ray.kill(ray.get_actor(self.holder_name))
            self._holder = None

    def _as_rows(self, table: pa.Table) -> pa.Table:
        """A user's block in colray's row contract: ids, keys, reasons and vector bytes."""
        n = table.num_rows
        errors: list[str | None] = [None] * n
        ids, keys = self._ids(table, errors)
        columns: dict[str, Any] = {c: table.column(c) for c in self.payload_columns}
        for spec in self.layout:
            blobs, counts = _matrices(table, spec, errors)
            columns[vectors_column(spec.name)] = pa.array(blobs, pa.binary())
            columns[count_column(spec.name)] = pa.array(counts, pa.int32())
        locations = [f"{self.source_name}#{k}" for k in keys]
        columns.update({
            ID: pa.array(ids, pa.string()), KEY: pa.array(keys, pa.string()),
            LOCATION: pa.array(locations, pa.string()), ERROR: pa.array(errors, pa.string()),
            HASH: pa.nulls(n, pa.string()),
        })  # fmt: skip
        return pa.table(columns)

    def _ids(self, table: pa.Table, errors: list[str | None]) -> tuple[list[Any], list[str]]:
        column = self.id_column or self.key_column
        assert column is not None
        values = table.column(column).to_pylist()
        ids: list[Any] = []
        keys: list[str] = []
        for i, value in enumerate(values):
            keys.append(str(value))
            if value is None:
                errors[i] = reason(READ, "NullId", f"column {column!r} is null")
                ids.append(None)
            elif self.key_column is not None:
                ids.append(point_id(self.source_name, str(value)))
            else:
                ids.append(_valid_id(value, errors, i))
        return ids, keys


def _valid_id(value: Any, errors: list[str | None], i: int) -> str | None:
    """A point id as Qdrant takes it: a UUID, or a non-negative integer (travels as its digits,
    see `sink.wire_id`)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        errors[i] = reason(
            READ, "InvalidId", f"{value!r} is neither a UUID nor an unsigned integer"
        )
        return None


def _matrices(
    table: pa.Table, spec: VectorSpec, errors: list[str | None]
) -> tuple[list[bytes | None], list[int]]:
    """One named vector's column as float32 bytes per row; rows it cannot be get a reason."""
    if spec.name not in table.column_names:
        raise ValueError(f"the dataset has no column {spec.name!r} for that named vector")
    values = BlockAccessor.for_block(table.select([spec.name])).to_numpy(spec.name)
    blobs: list[bytes | None] = [None] * len(values)
    counts = [0] * len(values)
    for i, value in enumerate(values):
        if errors[i] is not None:
            continue
        problem, matrix = _matrix(value, spec.dim, dense=not spec.multivector)
        if problem:
            errors[i] = reason(READ, "BadVector", f"{spec.name!r}: {problem}")
        else:
            blobs[i], counts[i] = matrix.tobytes(), len(matrix)
    return blobs, counts


def _matrix(value: Any, dim: int, *, dense: bool) -> tuple[str | None, np.ndarray]:
    """A cell as an (n, dim) float32 matrix (a dense vector: (1, dim)), or what is wrong."""
    empty = np.empty((0, dim), np.float32)
    if value is None:
        return "is null", empty
    try:
        if isinstance(value, np.ndarray) and value.dtype == object:
            value = [np.asarray(row, np.float32) for row in value]
        matrix = np.ascontiguousarray(np.asarray(value, np.float32))
    except (TypeError, ValueError) as exc:
        return f"is not a matrix of numbers ({exc})", empty
    if dense:
        if matrix.shape != (dim,):
            return f"has shape {matrix.shape}, expected ({dim},)", empty
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        return f"has shape {matrix.shape}, expected (n, {dim})", empty
    if len(matrix) == 0:
        return "has no vectors", empty
    if not np.isfinite(matrix).all():
        return "holds NaN or infinite values", empty
    return None, matrix


def merge_outcomes(outcomes: Iterable[WriteOutcome]) -> WriteOutcome:
    """Many blocks' outcomes as one: counts added, lists joined."""
    merged = WriteOutcome(rows=0)
    for outcome in outcomes:
        for f in fields(WriteOutcome):
            mine, theirs = getattr(merged, f.name), getattr(outcome, f.name)
            if isinstance(mine, dict):
                for key, value in theirs.items():
                    mine[key] = mine.get(key, 0.0) + value
            else:
                setattr(merged, f.name, mine + theirs)
    return merged


def _this_node() -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


@ray.remote(num_cpus=0)
class _StoreHolder:
    """The one process that holds an Edge or local-mode store for a datasink's write."""

    def __init__(
        self, cfg: SinkConfig, layout: list[VectorSpec], payload_columns: list[str], source: str
    ):
        self.sink: Sink = open_prepared_sink(cfg, layout)
        self.writer = BlockWriter(self.sink, cfg, layout, payload_columns, source)

    def ready(self) -> bool:
        return True

    def write(self, table: pa.Table) -> WriteOutcome:
        return self.writer.write(table)

    def finalize(self) -> tuple[dict[str, Any], int]:
        result = asdict(self.sink.finalize())
        count = self.sink.count()
        self.sink.close()
        return result, count
