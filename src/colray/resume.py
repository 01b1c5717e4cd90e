"""Resume state: the rows an interrupted job already finished, kept under the run directory.

The driver appends the ids of each finished block (written or dead-lettered) to a log; a job
started again with the same source, models and sink (`Job.fingerprint`) skips them. A finished
job clears it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


class ResumeLog:
    """An append-only log of finished point ids; a torn last line (a crash mid-write) is ignored."""

    def __init__(self, run_dir: str | os.PathLike[str], fingerprint: str):
        self.dir = Path(run_dir) / "resume" / fingerprint
        self.path = self.dir / "done.log"
        self._handle: Any = None

    def load(self) -> set[str]:
        if not self.path.is_file():
            return set()
        with self.path.open() as handle:
            return {line[:-1] for line in handle if line.endswith("\n") and len(line) == 37}

    def record(self, point_ids: list[str]) -> None:
        if not point_ids:
            return
        if self._handle is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a")
        self._handle.write("".join(f"{pid}\n" for pid in point_ids))
        self._handle.flush()
        os.fsync(self._handle.fileno())  # a SIGKILL right after must not lose these

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def clear(self) -> None:
        """The job finished: the next run is a fresh one (and overwrites, never duplicates)."""
        self.close()
        shutil.rmtree(self.dir, ignore_errors=True)
