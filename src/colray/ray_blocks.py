"""References to a Ray dataset's output blocks as they are produced: the one place colray uses
Ray Data internals (`iter_internal_ref_bundles`, a DeveloperAPI, and `RefBundle`'s fields).

Block references let the driver hand each embedded block to a writer actor without the data
passing through the driver. `tests/test_ray_blocks.py` fails loudly if a Ray upgrade changes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray


@dataclass(frozen=True)
class BlockRef:
    """One output block: its object ref, and the rows of it that belong to the output."""

    ref: Any  # ray.ObjectRef[pa.Table]
    start: int | None = None
    end: int | None = None
    rows: int | None = None  # as Ray's metadata counts them (None where it does not)

    def rows_of(self, table: pa.Table) -> pa.Table:
        """The rows this reference covers of the block it points to."""
        if self.start is None or self.end is None:
            return table
        return table.slice(self.start, self.end - self.start)

    def fetch(self) -> pa.Table:
        return self.rows_of(ray.get(self.ref))


def output_blocks(dataset: ray.data.Dataset) -> Iterator[BlockRef]:
    """Start executing `dataset`; yield a reference to each output block as it is ready."""
    bundles = dataset.iter_internal_ref_bundles()
    return _references(bundles)


def _references(bundles: Iterator[Any]) -> Iterator[BlockRef]:
    for bundle in bundles:
        for entry, block_slice in zip(bundle.blocks, bundle.slices, strict=True):
            if block_slice is None:
                yield BlockRef(entry.ref, rows=entry.metadata.num_rows)
            else:
                start, end = block_slice.start_offset, block_slice.end_offset
                yield BlockRef(entry.ref, start, end, end - start)
