"""colray: datasets into late-interaction (multivector) search indexes in Qdrant, on Ray.

The public API, imported lazily so that `import colray` loads neither Ray nor torch. (No
submodule is named like a public function: importing it would shadow the function here.)
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Under `uv run`, Ray would otherwise repackage the working directory and rebuild the
# environment for every worker, and workers would run in that copy: relative store paths
# then land in Ray's temp folder. colray's workers use this interpreter's environment.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

__version__ = "0.1.0"

_HOMES = {
    "ingest": "colray.api",
    "reindex": "colray.api",
    "search": "colray.api",
    "load_settings": "colray.config",
    "Settings": "colray.config",
    "ConfigError": "colray.config",
    "RunReport": "colray.report",
    "LostRowsError": "colray.errors",
    "RunFailed": "colray.errors",
    "SinkUnavailable": "colray.errors",
    "IndexingTimeout": "colray.errors",
    "RayUnavailable": "colray.errors",
    "WorkerFailed": "colray.errors",
    "TooManyFailuresError": "colray.report",
    "Hit": "colray.sink",
    "SinkError": "colray.sink",
    "RetriesExhausted": "colray.sink",
    "MultivectorDatasink": "colray.datasink",
    "WriteOutcome": "colray.points",
}
__all__ = [
    "ConfigError",
    "Hit",
    "IndexingTimeout",
    "LostRowsError",
    "MultivectorDatasink",
    "RayUnavailable",
    "RetriesExhausted",
    "RunFailed",
    "RunReport",
    "Settings",
    "SinkError",
    "SinkUnavailable",
    "TooManyFailuresError",
    "WorkerFailed",
    "WriteOutcome",
    "ingest",
    "load_settings",
    "reindex",
    "search",
]
assert sorted(__all__) == sorted(_HOMES)

if TYPE_CHECKING:
    from colray.api import ingest, reindex, search
    from colray.config import ConfigError, Settings, load_settings
    from colray.datasink import MultivectorDatasink
    from colray.errors import (
        IndexingTimeout,
        LostRowsError,
        RayUnavailable,
        RunFailed,
        SinkUnavailable,
        WorkerFailed,
    )
    from colray.points import WriteOutcome
    from colray.report import RunReport, TooManyFailuresError
    from colray.sink import Hit, RetriesExhausted, SinkError


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'colray' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
