"""Rebuilds without downtime: load a new version of the store, then move readers to it at once.

Readers use a stable name (a Qdrant alias, or for Edge a symlink at sink.path) that is switched
only once the new version is complete and ready; old versions beyond sink.keep_versions go.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from colray.config import Settings
from colray.job import prepare_job
from colray.pipeline import run_ingest
from colray.report import RunOrigin, RunReport
from colray.sink import Versions, new_version_name, open_sink, open_versions

log = logging.getLogger(__name__)


def reindex(
    settings: Settings,
    report_path: str | os.PathLike[str] | None = None,
    *,
    incremental: bool = False,
    adopt: bool = False,
    client: Any = None,
    origin: RunOrigin | None = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> RunReport:
    """Rebuild the store behind its stable name and return the run's report.

    A full rebuild loads a new version and switches to it; a failed one is never served.
    `incremental` updates the live version in place instead: unchanged rows are skipped,
    changed rows re-embedded, points whose rows left the source deleted. Queries see a
    complete store throughout, mid-update points being the old or the new version of a row.
    `adopt`: the name may be a plain store made by `colray ingest` (of any layout); it is
    rebuilt as a version, and the plain store kept as the previous version (Edge) or deleted
    (Qdrant) just before the switch. `client`: an open qdrant-client (local mode allows one
    per directory).
    """
    cfg = settings.sink
    owned = None
    if cfg.kind == "qdrant" and client is None:
        from colray.sink.qdrant import make_client

        client = owned = make_client(cfg)
    try:
        versions = open_versions(cfg, client)
        plain = adopt and versions.is_plain()
        live = None if plain else versions.live()
        migrating: list[str] = []
        if incremental and live is not None:
            migrating = _layout_changes(settings, versions, live, client)
        if incremental and live is not None and not migrating:
            report = _ingest_into(
                settings, versions, live, report_path, True, client, origin, on_progress
            )
            report.reindex = _summary(cfg.kind, versions, "incremental", live, live, [])
        else:
            report = _rebuild(
                settings, versions, live, plain, migrating, report_path, incremental, client,
                origin, on_progress,
            )  # fmt: skip
        report.save()
        return report
    finally:
        if owned is not None:
            owned.close()


def _rebuild(
    settings: Settings,
    versions: Versions,
    live: str | None,
    plain: bool,
    migrating: list[str],
    report_path: str | os.PathLike[str] | None,
    incremental: bool,
    client: Any,
    origin: RunOrigin | None,
    on_progress: Callable[[dict[str, Any]], None] | None,
) -> RunReport:
    """Load a new version, then switch the stable name to it and retire the oldest."""
    cfg = settings.sink
    version = new_version_name()
    try:
        report = _ingest_into(
            settings, versions, version, report_path, incremental, client, origin, on_progress
        )
    except BaseException:
        # Never served, and a rerun builds a version of its own: nothing to keep.
        _drop_quietly(versions, version)
        raise
    if plain:  # the one gap: from here until the switch, the name resolves to nothing
        live = versions.retire_plain()
    versions.switch(version)
    dropped = _retire(versions, version, live, cfg.keep_versions)
    report.reindex = _summary(cfg.kind, versions, "rebuild", version, live, dropped)
    if plain:
        report.reindex["adopted"] = live or "the plain collection, deleted"
    if migrating:
        report.reindex["layout_changed"] = migrating
    return report


def _ingest_into(
    settings: Settings,
    versions: Versions,
    version: str,
    report_path: str | os.PathLike[str] | None,
    incremental: bool,
    client: Any,
    origin: RunOrigin | None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> RunReport:
    versioned = settings.model_copy(update={"sink": versions.sink_for(version)})
    origin = replace(origin or RunOrigin(), command="reindex")
    return run_ingest(versioned, report_path, incremental=incremental, client=client,
                      origin=origin, on_progress=on_progress)  # fmt: skip


def _layout_changes(settings: Settings, versions: Versions, live: str, client: Any) -> list[str]:
    """How the live version's vectors differ from this job's (none: it can be updated in place).
    A store of another layout (a colray upgrade, a new model) is rebuilt whole instead."""
    job = prepare_job(settings)
    store = open_sink(versions.sink_for(live), job.layout, client)
    try:
        changes = store.layout_problems()
    finally:
        store.close()
    if changes:
        log.warning(
            "the live version %s has another vector layout (%s): rebuilding it in full",
            live,
            "; ".join(changes),
        )
    return changes


def _retire(versions: Versions, new: str, previous: str | None, keep: int) -> list[str]:
    """Drop versions older than `new` beyond the newest `keep` (counting `new`).

    The version just replaced is kept first (readers that opened it before the switch may still
    use it); versions newer than `new` belong to a rebuild still running and are left alone.
    """
    older = [v for v in reversed(versions.all()) if v < new]
    if previous in older:
        older.remove(previous)
        older.insert(0, previous)
    dropped = older[keep - 1 :]
    for version in dropped:
        versions.drop(version)
    return sorted(dropped)


def _drop_quietly(versions: Versions, version: str) -> None:
    try:
        if version in versions.all():
            versions.drop(version)
    except Exception as exc:  # the build's own error is the one to report
        log.warning("could not remove the unfinished version %s: %s", version, exc)


def _summary(
    kind: str, versions: Versions, mode: str, version: str, previous: str | None, dropped: list
) -> dict[str, Any]:
    return {
        "mode": mode,
        "served_as": versions.served_as,
        "engine": kind,
        "version": version,
        "previous": previous,
        "dropped": dropped,
    }
