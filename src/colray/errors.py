"""The failures that end a run after it started, each said in one line with what to do (exit 1).

Bad settings and unusable stores, found before anything runs, are `ConfigError` and `SinkError`.
"""

from __future__ import annotations


class RunFailed(RuntimeError):
    """A run that started and could not finish. Its report, with what was done so far, is
    written; the resume state is kept, so running the job again goes on where it stopped."""

    hint = "run the job again to go on where it stopped"

    def __str__(self) -> str:
        return f"{super().__str__()} ({self.hint})" if self.hint else super().__str__()


class SinkUnavailable(RunFailed):
    """Batch after batch ran out of retries: the server is down or overwhelmed."""

    hint = "check the server; run the job again to go on where it stopped"


class IndexingTimeout(RunFailed):
    """Every point is written, but the store was not ready within sink.ready_timeout_s."""

    hint = "the points are stored and the server is still indexing; raise sink.ready_timeout_s"


class RayUnavailable(RunFailed):
    """Ray could not start a local node or join the cluster run.ray_address names."""

    hint = (
        "on a busy machine start Ray first (`ray start --head`) and set run.ray_address=auto, "
        "or try again"
    )


class WorkerFailed(RunFailed):
    """A Ray worker the job needs failed for good (an actor that cannot be restarted)."""


class LostRowsError(RunFailed):
    """The pipeline's output does not account for every row the source holds."""

    hint = "this is a bug in colray; the report lists the counts"


class ClusterRefused(RunFailed):
    """The Ray dashboard refused a request (submit, status, logs)."""

    hint = "check the address and the cluster's dashboard"
