"""Sinks: the contract both Qdrant engines meet, and the factory that picks one from config.

Contract: ensure the layout (or fail before any embedding), load with indexing off, then
switch indexing on and wait until the store is ready.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from colray.config import SinkConfig
    from colray.layout import QueryPlan, VectorSpec


class SinkError(Exception):
    """A sink problem the user must fix (incompatible layout, unreachable store, ...)."""


class RetriesExhausted(Exception):
    """A transient failure (timeout, reset, 429, 5xx) outlasted the retries.

    Carries only the last error's text, so it crosses process boundaries intact (Ray cannot
    rebuild qdrant-client's own exceptions on the driver).
    """


@dataclass
class Point:
    id: str
    vectors: dict[str, np.ndarray]
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Hit:
    """A search result, or a stored point (its vectors only when asked for)."""

    id: str
    score: float
    payload: dict[str, Any]
    vectors: dict[str, np.ndarray] | None = None


def wire_id(point_id: str) -> str | int:
    """A point id as the engines take it: colray's own ids are UUIDs; an id of digits alone
    (a datasink user's integer id) is that integer."""
    return int(point_id) if point_id.isdigit() else point_id


def query_for(query: np.ndarray | Mapping[str, np.ndarray], vector: str) -> list[Any]:
    """The query for one named vector: its own entry of a mapping, else the one array."""
    chosen = query[vector] if isinstance(query, Mapping) else query
    return np.asarray(chosen, np.float32).tolist()


def hit_from_record(point: Any) -> Hit:
    """A scored point or record from either engine (both carry id, score, payload, vector)."""
    vectors = point.vector if isinstance(point.vector, dict) else None
    return Hit(
        str(point.id),
        float(getattr(point, "score", 0.0) or 0.0),
        dict(point.payload or {}),
        {k: np.asarray(v, np.float32) for k, v in vectors.items()} if vectors else None,
    )


@dataclass
class FinalizeResult:
    """How the store became ready: its last status, and what the server said on the way."""

    status: str
    indexed_vectors: int | None
    seconds: float
    points: int | None = None
    # The server's progress while it indexed: seconds since the switch, status, indexed
    # vectors and (where the server has the optimizations endpoint) points still queued.
    progress: list[dict[str, Any]] = field(default_factory=list)


class Sink(Protocol):
    """What both engines do. `write` raises RetriesExhausted when transient failures outlast
    the retries; any other exception is a rejection of these points that no retry changes."""

    def prepare(self) -> None:
        """Create the store or check that the existing one fits the layout; indexing off."""
        ...

    def write(self, points: list[Point]) -> None: ...

    def finalize(
        self, *, progress: bool = False, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> FinalizeResult:
        """Switch indexing back on and wait until the store is ready for queries, showing the
        server's indexing progress in a bar when `progress`, and to `on_progress`."""
        ...

    def count(self) -> int: ...

    def layout_problems(self) -> list[str]:
        """How an existing store's vectors differ from the layout; [] if none or no store."""
        ...

    def query(
        self,
        query: np.ndarray | Mapping[str, np.ndarray],
        plan: QueryPlan,
        *,
        limit: int,
        with_vectors: bool = False,
    ) -> list[Hit]:
        """Search by `plan`; `query` is one array for every vector it names, or one per name
        (a multivector for MaxSim, a dense vector for a MUVERA prefetch)."""
        ...

    def points(self, *, with_vectors: bool = True) -> Iterator[Hit]:
        """Every point, streamed a page at a time."""
        ...

    def retrieve_all(self, *, with_vectors: bool = True) -> list[Hit]:
        """Every point at once (tests and small stores)."""
        ...

    def stored_hashes(self) -> dict[str, str | None]:
        """Every point id with the content hash colray stored with it (incremental runs)."""
        ...

    def delete(self, point_ids: list[str]) -> None: ...

    def close(self) -> None: ...


class Versions(Protocol):
    """Versions of one store behind the stable name queries use: a Qdrant alias, or (Edge)
    a symlink to the live store directory. Version names sort oldest first."""

    served_as: str  # the alias, or the pointer's path

    def live(self) -> str | None:
        """The version queries see now; None before the first rebuild."""
        ...

    def all(self) -> list[str]: ...

    def sink_for(self, version: str) -> SinkConfig:
        """The sink settings that write into (or read) exactly this version."""
        ...

    def switch(self, version: str) -> None:
        """Point the stable name at `version` in one atomic step."""
        ...

    def drop(self, version: str) -> None: ...

    def is_plain(self) -> bool:
        """The stable name is a plain store (made by `colray ingest`), not a pointer or alias."""
        ...

    def retire_plain(self) -> str | None:
        """Clear the stable name of its plain store, for `switch` to point it at a version:
        the store kept as the oldest version (Edge), or deleted (Qdrant cannot rename a
        collection). Returns the version it was kept as, if kept."""
        ...


def new_version_name(at: dt.datetime | None = None) -> str:
    """`v` and the UTC time to the microsecond: unique per rebuild, and sorts by age."""
    return "v" + (at or dt.datetime.now(dt.UTC)).strftime("%Y%m%d%H%M%S%f")


def open_sink(cfg: SinkConfig, layout: list[VectorSpec], client: Any = None) -> Sink:
    """The sink for `cfg`; `client` is an already open qdrant-client to reuse (local mode
    allows one per directory, so a process that queries and writes must share it)."""
    if cfg.kind == "edge":
        from colray.sink.edge import EdgeSink

        return EdgeSink(cfg, layout)
    from colray.sink.qdrant import QdrantSink

    return QdrantSink(cfg, layout, client=client)


def open_prepared_sink(cfg: SinkConfig, layout: list[VectorSpec], client: Any = None) -> Sink:
    """The sink with its store created, or checked against the layout, and indexing off."""
    sink: Sink | None = None
    try:
        sink = open_sink(cfg, layout, client)
        sink.prepare()
        return sink
    except Exception as exc:
        if sink is not None:
            sink.close()
        raise unreachable(cfg, exc) from None


def unreachable(cfg: SinkConfig, exc: Exception) -> SinkError:
    """A failure to open or prepare the sink as the user sees it: where, never the key."""
    if isinstance(exc, SinkError):
        return exc
    from colray.rows import short

    if "already accessed by another instance" in str(exc):  # qdrant-client's local mode
        return SinkError(
            f"the local-mode store at {cfg.location()} is open in another process (a running "
            "ingest?); one process may hold it at a time"
        )
    if refused_credentials(exc):
        from colray.config import API_KEY_ENV

        return SinkError(
            f"the server at {cfg.location()} refused the API key "
            f"({exc.status_code}: {_server_message(exc)}); set {API_KEY_ENV} or "  # type: ignore[attr-defined]
            "sink.api_key_file to its key"
        )
    return SinkError(f"cannot open the sink ({cfg.location()}): {type(exc).__name__}: {short(exc)}")


def refused_credentials(exc: BaseException) -> bool:
    """A server's 401 (no key) or 403 (a wrong one): retrying cannot help, the user can."""
    return getattr(exc, "status_code", None) in (401, 403)


def _server_message(exc: BaseException) -> str:
    """The error Qdrant put in its response envelope, else the HTTP reason."""
    try:
        return str(json.loads(exc.content)["status"]["error"])  # type: ignore[attr-defined]
    except Exception:  # not Qdrant's envelope
        return str(getattr(exc, "reason_phrase", "") or "refused")


def open_versions(cfg: SinkConfig, client: Any = None) -> Versions:
    if cfg.kind == "edge":
        from colray.sink.edge import StoreVersions

        return StoreVersions(cfg)
    from colray.sink.qdrant import CollectionVersions, make_client

    return CollectionVersions(cfg, client or make_client(cfg))


HASH_PAYLOAD_KEY = "_colray.hash"
SCROLL_PAGE = 1024


def stored_hash(payload: dict[str, Any] | None) -> str | None:
    """The content hash colray stored in a point's payload (None for points from before)."""
    return ((payload or {}).get("_colray") or {}).get("hash")


def json_safe(value: Any) -> Any:
    """Arrow/Python values as JSON payload values (Qdrant payloads are JSON)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    return str(value)
