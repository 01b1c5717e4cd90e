"""Past runs under a run directory: list them newest first, show one readably, prune old ones
(never the resume state of a job that has not finished).
"""

from __future__ import annotations

import collections
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from colray.config import ConfigError

REPORT = "report.json"
DEAD_LETTERS = "dead_letters.parquet"
RESUME = "resume"  # <run dir>/resume/<job fingerprint>/: not a run


@dataclass
class PastRun:
    run_id: str
    path: Path
    report: dict[str, Any] | None  # None: the run left no report (killed before it wrote one)

    @property
    def outcome(self) -> str:
        if self.report is None:
            return "no report (killed?)"
        return str(self.report.get("outcome") or "unknown")

    def row(self) -> dict[str, Any]:
        report = self.report or {}
        return {
            "id": self.run_id,
            "started": report.get("started_at", "")[:19].replace("T", " "),
            "duration_s": report.get("duration_s"),
            "mode": report.get("mode"),
            "rows": report.get("rows_read"),
            "written": report.get("points_written"),
            "dead_lettered": report.get("dead_lettered"),
            "outcome": self.outcome,
            "report": str(self.path / REPORT) if self.report is not None else None,
        }


def past_runs(run_dir: str | Path) -> list[PastRun]:
    """Every run folder under `run_dir`, newest first (run ids start with their UTC time)."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    runs = []
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name == RESUME:
            continue
        report_file = folder / REPORT
        report = None
        if report_file.is_file():
            try:
                report = json.loads(report_file.read_text())
            except ValueError:
                report = None
        runs.append(PastRun(folder.name, folder, report))
    return sorted(runs, key=lambda run: run.run_id, reverse=True)


def find_run(run_dir: str | Path, run_id: str) -> PastRun:
    for run in past_runs(run_dir):
        if run.run_id == run_id or run.run_id.startswith(run_id):
            return run
    raise ConfigError([f"ID: no run {run_id!r} under {run_dir}"])


def describe(run: PastRun, top: int = 5) -> str:
    """A run's report as a person reads it: what, how it ended, the counts, the top reasons."""
    report = run.report
    if report is None:
        return f"{run.run_id}: {run.outcome}\n  folder: {run.path}"
    lines = [
        f"{run.run_id}: {report.get('outcome')} (exit {report.get('exit_code')}), "
        f"{report.get('mode')}, started {report.get('started_at', '')[:19]}, "
        f"{report.get('duration_s', 0):.1f}s",
        f"  source: {report.get('source')}",
        f"  model:  {report.get('model')}",
        f"  sink:   {report.get('sink', {}).get('kind')} {report.get('sink', {}).get('where')}",
    ]
    if report.get("config"):
        lines.append(f"  config: {report['config']} {' '.join(report.get('overrides') or [])}")
    if report.get("documents_in_source") is not None:
        lines.append(f"  documents: {report['documents_read']} of {report['documents_in_source']}")
    lines.append(
        f"  rows: {report.get('rows_read')} read of {report.get('rows_in_source')}; "
        f"{report.get('points_written')} written, {report.get('dead_lettered')} dead-lettered, "
        f"{report.get('skipped_existing')} skipped; store holds {report.get('points_in_store')}"
    )
    if report.get("error"):
        lines.append(f"  error: {report['error']}")
    reasons = collections.Counter(report.get("dead_letter_reasons") or {})
    if reasons:
        lines.append("  top dead-letter reasons:")
        lines += [f"    {n:>6}  {why}" for why, n in reasons.most_common(top)]
    dead = Path(report.get("dead_letter_path") or run.path / DEAD_LETTERS)
    if report.get("dead_lettered") and dead.is_file():
        lines.append(f"  dead letters: {dead}")
    lines.append(f"  report: {run.path / REPORT}")
    return "\n".join(lines)


def prune(run_dir: str | Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` run folders; returns the ids removed. The resume state
    (`<run dir>/resume/`) of unfinished jobs is never touched."""
    if keep < 0:
        raise ConfigError(["--keep: must be 0 or more"])
    removed = []
    for run in past_runs(run_dir)[keep:]:
        shutil.rmtree(run.path)
        removed.append(run.run_id)
    return removed
