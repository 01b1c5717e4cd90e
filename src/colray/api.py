"""The public Python API behind `import colray`: ingest, reindex and search a job given as a YAML
path, a dict of settings or a `Settings`. Ray is imported only when a job runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from colray.config import Settings, load_settings

if TYPE_CHECKING:
    from colray.report import RunReport
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


def ingest(
    config: JobConfig,
    overrides: Iterable[str] = (),
    *,
    incremental: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    client: Any = None,
) -> RunReport:
    """Embed the job's source and load it into its sink; return the run's report.

    `incremental`: skip rows stored unchanged, re-embed changed ones, delete points whose rows
    left the source. `client`: an open qdrant-client for a local-mode store (one client per
    directory: a process that also queries it passes its own).
    Raises ConfigError (bad settings, nothing done), SinkError (the store cannot be used),
    TooManyFailuresError (finished, more dead letters than allowed) or LostRowsError.
    """
    from colray.pipeline import run_ingest

    settings = settings_of(config, overrides)
    return run_ingest(settings, report_path, incremental=incremental, client=client)


def reindex(
    config: JobConfig,
    overrides: Iterable[str] = (),
    *,
    incremental: bool = False,
    report_path: str | os.PathLike[str] | None = None,
    client: Any = None,
) -> RunReport:
    """Rebuild the job's store behind its stable name and switch to it at once, or update the
    live version in place (`incremental`); arguments as for `ingest`."""
    from colray.rebuild import reindex as rebuild

    settings = settings_of(config, overrides)
    return rebuild(settings, report_path, incremental=incremental, client=client)


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
