"""The public Python API behind `import colray`: ingest, reindex and search a job given as a YAML
path, a dict of settings or a `Settings`. Ray is imported only when a job runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colray.config import Settings, load_settings

if TYPE_CHECKING:
    from colray.report import RunOrigin, RunReport
    from colray.sink import Hit

JobConfig = str | os.PathLike[str] | Mapping[str, Any] | Settings


def settings_of(config: JobConfig, overrides: Iterable[str] = ()) -> Settings:
    """The job's settings: a YAML file (with the COLRAY_* environment and `overrides` on top),
    a mapping of the same sections, or finished `Settings`."""
    overrides = list(overrides)
    if isinstance(config, Settings):
        if overrides:
            raise ValueError("overrides apply to a config path or mapping; Settings are final")
        return config
    if isinstance(config, Mapping):
        return load_settings(None, overrides, base=config)
    return load_settings(Path(config), overrides)


def origin_of(config: JobConfig, overrides: Iterable[str], command: str) -> RunOrigin:
    from colray.report import RunOrigin

    path = str(Path(config).absolute()) if isinstance(config, str | os.PathLike) else None
    return RunOrigin(path, tuple(overrides), command)


def ingest(
    config: JobConfig,
    overrides: Iterable[str] = (),
    *,
    incremental: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    client: Any = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> RunReport:
    """Embed the job's source and load it into its sink; return the run's report.

    `incremental`: skip rows stored unchanged, re-embed changed ones, delete points whose rows
    left the source. `client`: an open qdrant-client for a local-mode store (one client per
    directory: a process that also queries it passes its own). `on_progress`: called every few
    seconds with how far the run is (phase, rows done of the total, rows/s, ETA, dead letters).
    Raises ConfigError (bad settings, nothing done), SinkError (the store cannot be used),
    TooManyFailuresError (finished, more dead letters than allowed) or LostRowsError.
    """
    from colray.pipeline import run_ingest

    settings = settings_of(config, overrides)
    origin = origin_of(config, overrides, "ingest")
    return run_ingest(settings, report_path, incremental=incremental, client=client,
                      origin=origin, on_progress=on_progress)  # fmt: skip


def reindex(
    config: JobConfig,
    overrides: Iterable[str] = (),
    *,
    incremental: bool = False,
    adopt: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    client: Any = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> RunReport:
    """Rebuild the job's store behind its stable name and switch to it at once, or update the
    live version in place (`incremental`); `adopt`: the name may be a plain store made by
    `ingest`, rebuilt as a version (how an old layout is migrated); the rest as for `ingest`."""
    from colray.rebuild import reindex as rebuild

    settings = settings_of(config, overrides)
    origin = origin_of(config, overrides, "reindex")
    return rebuild(settings, report_path, incremental=incremental, adopt=adopt, client=client,
                   origin=origin, on_progress=on_progress)  # fmt: skip


def search(
    config: JobConfig,
    text: str,
    *,
    limit: int = 5,
    vector: str | None = None,
    overrides: Iterable[str] = (),
) -> list[Hit]:
    """The `limit` best points for `text`, best first, as Hit(id, score, payload)."""
    from colray.query import search as run_query

    return run_query(settings_of(config, overrides), text, limit=limit, vector=vector)
