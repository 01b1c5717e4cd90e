"""The reader as a Ray Data datasource: one read task per group of resolved pieces, each with
its exact row count known before anything is read (from the footers `sources` resolved).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from colray.sources import ResolvedSource, SkipRules, read_pieces


class ColraySource(Datasource):
    """Ray Data reader over resolved pieces; knows exact row counts before reading."""

    def __init__(self, source: ResolvedSource, rules: SkipRules):
        super().__init__()
        self.source = source
        self.rules = rules

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(p.size_bytes for p in self.source.pieces)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        pieces = self.source.pieces
        count = min(len(pieces), max(1, parallelism))
        tasks = []
        for group in (pieces[i::count] for i in range(count)):
            meta = BlockMetadata(
                num_rows=sum(p.num_rows for p in group),
                size_bytes=sum(p.size_bytes for p in group),
                input_files=[p.path for p in group],
                exec_stats=None,
            )
            read = partial(read_pieces, self.source, group, self.rules)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks
