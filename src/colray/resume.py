"""Resume state: the rows an interrupted job already finished, kept under the run directory.

The driver appends the ids of each finished block (written or dead-lettered) to a log; a job
started again with the same source, models and sink skips them. A finished job clears it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from colray.config import Settings

EMBED_IDENTITY = {"model", "profile", "vector_name", "doc_maxlen", "pool_factor"}
IMAGE_IDENTITY = {"model", "vector_name", "pooled", "max_pixels"}


def job_fingerprint(settings: Settings, layout: list[Any], source_files: list[str]) -> str:
    """What makes two runs the same job: the rows, how they are embedded, and where they go."""
    # Only what changes the points: a resumed run may use more actors or other batch sizes.
    identity = {
        "source": settings.source.model_dump(mode="json", exclude={"rows_per_block"}),
        "files": source_files,
        **model_identity(settings, layout),
        "sink": {
            "kind": settings.sink.kind,
            "where": settings.sink.url or settings.sink.path,
            "collection": settings.sink.collection,
        },
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def content_salt(settings: Settings, layout: list[Any]) -> str:
    """How rows become points: part of every row's content hash, so a new model or layout
    makes an incremental run re-embed everything."""
    identity = {**model_identity(settings, layout), "payload": settings.source.payload_columns}
    return json.dumps(identity, sort_keys=True)


def model_identity(settings: Settings, layout: list[Any]) -> dict[str, Any]:
    """The models and vector layout a job embeds with (not how fast or where it runs)."""
    return {
        "embed": settings.embed.model_dump(mode="json", include=EMBED_IDENTITY)
        if settings.source.text_column
        else None,
        "image": settings.image.model_dump(mode="json", include=IMAGE_IDENTITY)
        if settings.source.image_column
        else None,
        "layout": [repr(spec) for spec in layout],
    }


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
