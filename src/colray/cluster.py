"""Ray Jobs: submit a colray job to a cluster, follow it, and read its status, logs and report.

The job runs jobs/ingest.py or jobs/reindex.py from the project directory, shipped to the
cluster as the job's working_dir with this colray as a py_module; secrets stay on the cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import stamina

import colray
from colray.config import API_KEY_ENV, ConfigError, load_settings
from colray.errors import ClusterRefused

# The job prints its run report as one line starting with this, so `colray status` can find
# it in the job's logs after the job (and the cluster's working copy) is gone.
REPORT_MARKER = "COLRAY_REPORT "
# ... and, while it runs, its progress every few seconds (report.Ledger.publish).
PROGRESS_MARKER = "COLRAY_PROGRESS "
ENTRYPOINTS = {"ingest": "jobs/ingest.py", "reindex": "jobs/reindex.py"}
# Never shipped in the working_dir (Ray also skips what .gitignore lists).
WORKING_DIR_EXCLUDES = [".git", ".venv", ".tools", ".colray", "**/__pycache__", ".*_cache"]
FORWARDED_ENV_PREFIX = "COLRAY_"
# Config that names a secret is not forwarded: the cluster reads its own (env or secret).
UNFORWARDED_ENV = {API_KEY_ENV}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Submission:
    submission_id: str
    entrypoint: str
    already_submitted: bool  # the id was taken: a double-fired schedule, not a new run


@dataclass
class JobState:
    submission_id: str
    status: str
    message: str | None
    exit_code: int | None  # the entrypoint's exit code (colray's codes) once it ended
    report: dict[str, Any] | None
    progress: dict[str, Any] | None = None  # the last progress the job printed


def find_project_dir(start: Path | None = None) -> Path:
    """The directory holding jobs/ingest.py: the current one or one above it."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ENTRYPOINTS["ingest"]).is_file():
            return candidate
    raise ConfigError(
        [
            f"--working-dir: no {ENTRYPOINTS['ingest']} in {here} or above it; run from the "
            "colray project directory (the one with jobs/ and configs/) or pass --working-dir"
        ]
    )


def entrypoint_for(
    command: str, config: Path, overrides: Sequence[str], *, incremental: bool
) -> list[str]:
    argv = ["python", ENTRYPOINTS[command], "--config", config.as_posix()]
    for override in overrides:
        argv += ["--set", override]
    return argv + (["--incremental"] if incremental else [])


def schedule_slot(every_minutes: int, now: dt.datetime | None = None) -> str:
    """The start of the schedule period `now` falls in, as a compact UTC time: every firing
    in the same period (a retried or double-fired schedule) names the same slot."""
    moment = now or dt.datetime.now(dt.UTC)
    period = every_minutes * 60
    start = int(moment.timestamp()) // period * period
    return dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%dt%H%Mz")


def scheduled_submission_id(command: str, config_text: str, argv: Sequence[str], slot: str) -> str:
    """One id per job and schedule slot; Ray refuses a second submission under it."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", slot):
        raise ConfigError([f"--schedule-slot: {slot!r} is not 1-40 letters, digits, _ . -"])
    digest = hashlib.sha256("\0".join([command, config_text, *argv]).encode()).hexdigest()
    return f"colray-{command}-{digest[:12]}-{slot.lower()}"


def slot_submission_id(command: str, config: Path, argv: Sequence[str], slot: str) -> str:
    """The submission id of a scheduled run: the job (config file, overrides, command and the
    COLRAY_* settings forwarded with it: another override is another job) and its slot."""
    settings = [f"{k}={v}" for k, v in sorted(forwarded_env().items())]
    return scheduled_submission_id(command, config.read_text(), [*argv, *settings], slot)


def submit(
    *,
    address: str | None,
    config: str,
    overrides: Sequence[str] = (),
    command: str = "ingest",
    incremental: bool = False,
    working_dir: str | None = None,
    submission_id: str | None = None,
    slot: str | None = None,
) -> Submission:
    """Validate the job here, then submit it; nothing reaches the cluster if the config is bad."""
    load_settings(config, list(overrides))  # fails now, naming the field, not on the cluster
    project = Path(working_dir).resolve() if working_dir else find_project_dir()
    config_path = Path(config).resolve()
    if not config_path.is_relative_to(project):
        raise ConfigError(
            [f"--config: {config} is outside the working directory {project}, which is all "
             "the cluster receives; put it there or pass --working-dir"]
        )  # fmt: skip
    if not (project / ENTRYPOINTS[command]).is_file():
        raise ConfigError([f"--working-dir: {project} has no {ENTRYPOINTS[command]}"])
    argv = entrypoint_for(
        command, config_path.relative_to(project), overrides, incremental=incremental
    )
    if slot is not None:
        submission_id = slot_submission_id(command, config_path, argv, slot)
    client = _client(address)
    runtime_env = {
        "working_dir": str(project),
        "py_modules": [str(Path(colray.__file__).parent)],
        "excludes": WORKING_DIR_EXCLUDES,
        "env_vars": forwarded_env(),
    }
    entrypoint = shlex.join(argv)
    try:
        for attempt in stamina.retry_context(
            on=_agent_starting, attempts=30, timeout=120, wait_initial=1, wait_max=5
        ):
            with attempt:
                job_id = client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env=runtime_env,
                    submission_id=submission_id,
                    metadata={"colray.command": command, "colray.config": argv[3]},
                )
    except Exception as exc:
        if submission_id and "already exists" in str(exc):
            return Submission(submission_id, entrypoint, already_submitted=True)
        raise refused(address, "submit the job", exc) from None
    return Submission(job_id, entrypoint, already_submitted=False)


def refused(address: str | None, action: str, exc: Exception) -> ClusterRefused:
    """A refusal from the Ray dashboard as one line: what was asked, where, and its answer."""
    where = address or os.environ.get("RAY_ADDRESS") or "RAY_ADDRESS unset"
    text = " ".join(str(exc).split())
    status = re.search(r"\b([45]\d\d)\b", text)
    answer = f"HTTP {status.group(1)}: " if status else ""
    return ClusterRefused(f"the Ray dashboard at {where} refused to {action}: {answer}{text[:300]}")


def _agent_starting(exc: BaseException) -> bool:
    """A cluster that just started refuses jobs until its head's job agent is up."""
    return isinstance(exc, RuntimeError) and "No available agent" in str(exc)


def forwarded_env() -> dict[str, str]:
    """COLRAY_* settings from this shell, so the cluster runs the job that was validated
    here; never the API key, which Ray would show in the job's runtime_env."""
    return {
        k: v
        for k, v in os.environ.items()
        if k.startswith(FORWARDED_ENV_PREFIX) and k not in UNFORWARDED_ENV
    }


def job_state(address: str | None, submission_id: str) -> JobState:
    client = _client(address)
    try:
        info = client.get_job_info(submission_id)
    except Exception as exc:
        if "404" in str(exc):
            raise ConfigError([f"ID: the cluster has no job {submission_id!r}"]) from None
        raise refused(address, f"show job {submission_id!r}", exc) from None
    status = str(getattr(info.status, "value", info.status))
    try:
        logs = client.get_job_logs(submission_id) if status != "PENDING" else ""
    except Exception as exc:
        raise refused(address, f"give the logs of job {submission_id!r}", exc) from None
    report = report_from_logs(logs) if status in TERMINAL else None
    progress = last_marked(logs, PROGRESS_MARKER)
    return JobState(submission_id, status, info.message, info.driver_exit_code, report, progress)


def report_from_logs(logs: str) -> dict[str, Any] | None:
    """The last report the job printed, if it got that far."""
    return last_marked(logs, REPORT_MARKER)


def last_marked(logs: str, marker: str) -> dict[str, Any] | None:
    """The JSON of the last log line that `marker` starts."""
    for line in reversed(logs.splitlines()):
        at = line.find(marker)
        if at >= 0:
            try:
                found: dict[str, Any] = json.loads(line[at + len(marker) :])
                return found
            except json.JSONDecodeError:
                continue
    return None


def colray_jobs(address: str | None) -> list[dict[str, Any]]:
    """The cluster's colray jobs (their metadata names the command), newest first."""
    client = _client(address)
    try:
        jobs = client.list_jobs()
    except Exception as exc:
        raise refused(address, "list its jobs", exc) from None
    rows = [
        {"submission_id": job.submission_id, "status": str(getattr(job.status, "value", job.status)),
         "command": (job.metadata or {}).get("colray.command"),
         "config": (job.metadata or {}).get("colray.config"), "start_time": job.start_time}
        for job in jobs
        if (job.metadata or {}).get("colray.command")
    ]  # fmt: skip
    return sorted(rows, key=lambda row: row["start_time"] or 0, reverse=True)


def describe_progress(progress: dict[str, Any]) -> str:
    """A running job's progress as one line: phase, rows, rate, ETA, dead letters."""
    done, total = progress.get("rows_done", 0), progress.get("rows_total") or 0
    share = f" ({done / total:.0%})" if total else ""
    eta = progress.get("eta_s")
    parts = [
        f"{progress.get('phase')}: {done:,} of {total:,} rows done{share}",
        f"{progress.get('rows_per_s', 0):.1f} rows/s over the last minute",
        f"ETA {_duration(eta)}" if eta is not None else "ETA unknown",
        f"{progress.get('dead_lettered', 0)} dead-lettered",
    ]
    reasons = progress.get("top_dead_letter_reasons") or {}
    if reasons:
        parts[-1] += " (" + ", ".join(f"{why} {n}" for why, n in reasons.items()) + ")"
    indexing = progress.get("indexing")
    if indexing:
        queued = indexing.get("queued_points")
        parts.append(
            f"server {indexing.get('status')}, {indexing.get('indexed_vectors')} vectors indexed"
            + (f", {queued} points queued" if queued is not None else "")
        )
    return "; ".join(parts)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def job_logs(address: str | None, submission_id: str) -> str:
    job_state(address, submission_id)  # an unknown id is a clear error, not a 404 trace
    try:
        return str(_client(address).get_job_logs(submission_id))
    except Exception as exc:
        raise refused(address, f"give the logs of job {submission_id!r}", exc) from None


def follow(
    address: str | None, submission_id: str, write: Callable[[str], Any] | None = None
) -> JobState:
    """Stream the job's logs (to stdout by default) until it ends; return how it ended."""
    client = _client(address)

    async def tail() -> None:
        async for chunk in client.tail_job_logs(submission_id):
            (write or sys.stdout.write)(chunk)

    asyncio.run(tail())
    return job_state(address, submission_id)


def exit_code(state: JobState) -> int:
    """The entrypoint's own code (colray's: 2 bad config, 3 too many dead letters) when Ray
    knows it; else 0 for success and 1 for anything else."""
    if state.status == "SUCCEEDED":
        return 0
    return state.exit_code if state.exit_code not in (None, 0) else 1


def _client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, ValueError) as exc:
        where = address or os.environ.get("RAY_ADDRESS") or "RAY_ADDRESS unset"
        raise ConfigError(
            [f"--address: cannot reach the Ray dashboard at {where}: {exc}"]
        ) from None
    except Exception as exc:  # it answered, and refused (a proxy's 403, a 5xx on /api/version)
        raise refused(address, "answer its version check", exc) from None
