"""A Qdrant server stand-in for the tests: real HTTP on a loopback port, Qdrant's REST routes and
response envelope, requests parsed with qdrant-client's own OpenAPI models, and the data kept in
qdrant-client's local engine. So the client, its REST transport, the JSON on the wire, the
sockets and colray's writer actors are all real; only the engine behind the routes is local mode.

Where colray depends on a server's behaviour it behaves like one: the `api-key` header (401
without it, 403 when wrong), the 32 MiB body limit (HTTP 400 with Qdrant's message), the
1,048,576-float multivector limit (422), and a collection that stays yellow for a while after
indexing is switched on. `Faults` adds failures: 500/502/503, 429 with Retry-After, dropped
connections, half of them after the request was applied. Not shipped with colray.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from qdrant_client import QdrantClient, models

MAX_BODY_BYTES = 32 * 1024 * 1024  # service.max_request_size_mb: 32
MAX_MULTIVECTOR_FLOATS = 1_048_576
VERSION = {"title": "qdrant - vector search engine", "version": "1.17.0", "commit": "standin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Refused(Exception):
    """An error answer: HTTP status and Qdrant's error message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass
class Faults:
    """Fail a share of requests like a server under stress; half after applying them."""

    rate: float = 0.0
    seed: int = 0
    kinds: tuple[str, ...] = ("500", "502", "503", "429", "drop")
    paths: tuple[str, ...] = ("/points",)  # only requests whose path contains one of these
    methods: tuple[str, ...] = ("GET", "POST", "PUT", "PATCH", "DELETE")  # ... and method
    injected: Counter[str] = field(default_factory=Counter)
    # A stretch of requests that all fail (a server that went away for a while).
    outage: int = 0
    # Point ids whose upserts always fail (503): batches that never get through.
    fail_points: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def roll(self, method: str, path: str, body: bytes = b"") -> tuple[str | None, bool]:
        """(kind of failure or None, whether to apply the request first)."""
        if method not in self.methods or not any(p in path for p in self.paths):
            return None, False
        if self.fail_points and any(pid.encode() in body for pid in self.fail_points):
            return "503", False
        if self.outage > 0:
            self.outage -= 1
            return "503", False
        roll = self.rng.random()
        if roll >= self.rate:
            return None, False
        return self.rng.choice(self.kinds), roll < self.rate / 2


@dataclass
class Request:
    method: str
    path: str
    body_bytes: int
    status: int
    at: float = 0.0  # time.monotonic() when it was answered


class QdrantStandIn:
    """Start with `with QdrantStandIn(...) as server:`; `server.url` is its base URL."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        faults: Faults | None = None,
        yellow_for_s: float = 0.0,
        upsert_delay_s: float = 0.0,
        apply_s: float = 0.0,
        never_green: bool = False,
        rate_limit: tuple[int, int] | None = None,
    ):
        self.api_key = api_key
        self.faults = faults or Faults()
        self.yellow_for_s = yellow_for_s  # after indexing is switched on
        self.upsert_delay_s = upsert_delay_s  # a loaded server: each upsert takes this long
        # A server's update worker: with apply_s > 0, updates are applied one at a time in
        # arrival order, each taking apply_s; `wait=true` answers once applied, `wait=false`
        # once queued ("acknowledged", as Qdrant answers after its write-ahead log), and reads
        # see only what was applied. 0 applies before answering, whatever `wait` says.
        self.apply_s = apply_s
        self._pending: asyncio.Queue | None = None
        self._applier: asyncio.Task | None = None
        self.acknowledged = 0  # updates answered before they were applied
        self._unapplied = 0
        self.never_green = never_green
        # Strict mode: at most this many upserts a second, else 429 with Retry-After seconds.
        self.rate_limit = rate_limit
        self._upserts_at: list[float] = []
        self.engine = QdrantClient(":memory:")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Request] = []
        self.bodies: list[bytes] = []  # every request body received, for leak checks
        self.yellow_until: dict[str, float] = {}
        self.errors: list[str] = []  # requests the stand-in itself could not handle
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> QdrantStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application(client_max_size=4 * MAX_BODY_BYTES)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # Stopping waits for requests in flight: a client that went away (a killed job)
            # must not hold the stand-in up for aiohttp's default minute.
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            self._loop.run_until_complete(site.start())
            if self.apply_s:
                self._pending = asyncio.Queue()
                self._applier = self._loop.create_task(self._apply_in_order())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="qdrant-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Qdrant stand-in did not start")

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        future.result(30)
        if self._applier is not None:
            asyncio.run_coroutine_threadsafe(self._stop_applying(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)
        self.engine.close()
        self._loop = None

    # --- the HTTP side ---------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.upsert_delay_s and request.method == "PUT" and request.path.endswith("/points"):
            await asyncio.sleep(self.upsert_delay_s)
        with self._lock:
            self.bodies.append(body)
        status, payload, headers = 200, None, {}
        try:
            self._authorize(request)
            if len(body) > MAX_BODY_BYTES:
                raise Refused(
                    400,
                    f"JSON payload ({len(body)} bytes) is larger than allowed "
                    f"(limit: {MAX_BODY_BYTES} bytes).",
                )
            self._limit_rate(request)
            kind, apply_first = self.faults.roll(request.method, request.path, body)
            if kind is not None and apply_first:
                # Applied (or, behind the update queue, queued) before the fault answers.
                self._route(request.method, request.path, request.query, body)
            if kind is not None:
                self.faults.injected[f"{kind} {'after' if apply_first else 'before'}"] += 1
                if kind == "drop":
                    return self._drop(request, len(body))
                raise Refused(
                    int(kind),
                    "injected fault",
                    {"Retry-After": "0"} if kind in ("429", "503") else {},
                )
            payload = self._route(request.method, request.path, request.query, body)
            if isinstance(payload, asyncio.Future):  # wait=true behind the update queue
                payload = await payload
        except Refused as exc:
            status, headers = exc.status, exc.headers
            error = {"status": {"error": exc.message}, "time": 0.0}
        except Exception as exc:  # a gap in the stand-in: fail loudly, and let tests see it
            self.errors.append(f"{request.method} {request.path}: {type(exc).__name__}: {exc}")
            status, error = 500, {"status": {"error": self.errors[-1]}, "time": 0.0}
        self._log(request, len(body), status)
        if status != 200:
            return web.json_response(error, status=status, headers=headers)
        if request.path == "/":  # the version banner comes without the envelope
            return web.json_response(payload)
        return web.json_response({"result": payload, "status": "ok", "time": 0.001})

    def _drop(self, request: web.Request, size: int) -> web.StreamResponse:
        """Close the connection without an answer, as a crashed proxy would."""
        self._log(request, size, 0)
        assert request.transport is not None
        request.transport.abort()
        return web.Response(status=500)  # never sent: the socket is gone

    def _limit_rate(self, request: web.Request) -> None:
        if self.rate_limit is None or not (request.method == "PUT" and
                                           request.path.endswith("/points")):  # fmt: skip
            return
        per_second, retry_after_s = self.rate_limit
        now = time.monotonic()
        with self._lock:
            self._upserts_at = [t for t in self._upserts_at if now - t < 1.0]
            if len(self._upserts_at) >= per_second:
                raise Refused(
                    429,
                    f"Rate limiting exceeded: Write rate limit exceeded: {per_second} per second",
                    {"Retry-After": str(retry_after_s)},
                )
            self._upserts_at.append(now)

    def _authorize(self, request: web.Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("api-key")
        if given is None:
            raise Refused(401, "Must provide an API key or an Authorization bearer token")
        if given != self.api_key:
            raise Refused(403, "Invalid API key or JWT")

    def _log(self, request: web.Request, size: int, status: int) -> None:
        with self._lock:
            self.requests.append(
                Request(request.method, request.path, size, status, time.monotonic())
            )

    # --- Qdrant's routes over the local engine ---------------------------------------------

    def _route(self, method: str, path: str, query: Any, body: bytes) -> Any:
        parts = [p for p in path.split("/") if p]
        data = json.loads(body) if body else {}
        if not parts:
            return VERSION
        if parts == ["aliases"]:
            return _dump(self.engine.get_aliases())
        if parts[0] != "collections":
            raise Refused(404, f"no route {method} {path}")
        if len(parts) == 1:
            return _dump(self.engine.get_collections())
        if parts[1] == "aliases" and method == "POST":
            change = models.ChangeAliasesOperation.model_validate(data)
            return self.engine.update_collection_aliases(change_aliases_operations=change.actions)
        name, subpath = parts[1], "/".join(parts[2:])
        handler = self._routes().get((method, subpath))
        if handler is None:
            raise Refused(404, f"no route {method} {path}")
        if (method, subpath) == ("GET", "exists"):
            return {"exists": self.engine.collection_exists(name)}
        return handler(
            name if (method, subpath) == ("PUT", "") else self._resolve(name), data, query
        )

    def _routes(self) -> dict[tuple[str, str], Callable[[str, Any, Any], Any]]:
        return {
            ("PUT", ""): self._create,
            ("GET", ""): self._info,
            ("PATCH", ""): self._update,
            ("DELETE", ""): lambda name, data, q: self.engine.delete_collection(name),
            ("GET", "exists"): lambda name, data, q: None,  # answered in _route
            ("GET", "optimizations"): self._optimizations,
            ("PUT", "points"): self._upsert,
            ("POST", "points/delete"): self._delete,
            ("POST", "points/scroll"): self._scroll,
            ("POST", "points/count"): self._count,
            ("POST", "points/query"): self._query,
        }

    def _resolve(self, name: str) -> str:
        """A collection or alias name as the engine's collection; 404 for neither."""
        for alias in self.engine.get_aliases().aliases:
            if alias.alias_name == name:
                return alias.collection_name
        if not self.engine.collection_exists(name):
            raise Refused(404, f"Not found: Collection `{name}` doesn't exist!")
        return name

    def _create(self, name: str, data: Any, query: Any) -> Any:
        if self.engine.collection_exists(name):
            raise Refused(409, f"Wrong input: Collection `{name}` already exists!")
        request = models.CreateCollection.model_validate(data)
        return self.engine.create_collection(
            name,
            vectors_config=request.vectors,
            sparse_vectors_config=request.sparse_vectors,
            on_disk_payload=request.on_disk_payload,
            optimizers_config=request.optimizers_config,
            hnsw_config=request.hnsw_config,
            quantization_config=request.quantization_config,
        )

    def _update(self, name: str, data: Any, query: Any) -> Any:
        request = models.UpdateCollection.model_validate(data)
        threshold = request.optimizers_config and request.optimizers_config.indexing_threshold
        if threshold:  # indexing switched on: the server builds its index for a while
            self.yellow_until[name] = time.monotonic() + self.yellow_for_s
        return self.engine.update_collection(name, optimizers_config=request.optimizers_config)

    def _indexing(self, name: str) -> float | None:
        """While the collection indexes, the share of its points still queued; else None."""
        if self.never_green:
            return 1.0
        left = self.yellow_until.get(name, 0.0) - time.monotonic()
        if left <= 0:
            return None
        return left / self.yellow_for_s

    def _info(self, name: str, data: Any, query: Any) -> Any:
        info = self.engine.get_collection(name)
        queued = self._indexing(name)
        if queued is not None:
            info.status = models.CollectionStatus.YELLOW
            info.indexed_vectors_count = int((info.points_count or 0) * (1 - queued))
        return _dump(info)

    def _optimizations(self, name: str, data: Any, query: Any) -> Any:
        share = self._indexing(name)
        queued = round(self.engine.count(name).count * share) if share is not None else 0
        summary = {"queued_optimizations": int(bool(queued)), "queued_segments": int(bool(queued)),
                   "queued_points": queued, "idle_segments": 1}  # fmt: skip
        return {"summary": summary, "running": []}

    def _upsert(self, name: str, data: Any, query: Any) -> Any:
        request = models.PointsList.model_validate(data)
        for point in request.points:
            vectors = point.vector if isinstance(point.vector, dict) else {"": point.vector}
            for vector_name, vector in vectors.items():
                floats = sum(len(row) for row in vector) if _is_matrix(vector) else 0
                if floats > MAX_MULTIVECTOR_FLOATS:
                    raise Refused(
                        422,
                        f"Wrong input: multivector {vector_name!r} has {floats} values, more "
                        f"than the limit of {MAX_MULTIVECTOR_FLOATS}",
                    )
        return self._queue_update(query, lambda: self.engine.upsert(name, points=request.points))

    def _delete(self, name: str, data: Any, query: Any) -> Any:
        kind = models.FilterSelector if "filter" in data else models.PointIdsList
        selector = kind.model_validate(data)
        return self._queue_update(query, lambda: self.engine.delete(name, points_selector=selector))

    def _queue_update(self, query: Any, apply: Callable[[], Any]) -> Any:
        """An update applied now, or queued behind the others (see apply_s): then a future
        the handler awaits for `wait=true`, else Qdrant's "acknowledged" answer."""
        if not self.apply_s:
            return _dump(apply())
        assert self._pending is not None and self._loop is not None
        future = self._loop.create_future()
        self._pending.put_nowait((apply, future))
        self._unapplied += 1
        if query.get("wait", "false").lower() == "true":
            return future
        self.acknowledged += 1
        return {"operation_id": self.acknowledged, "status": "acknowledged"}

    async def _apply_in_order(self) -> None:
        assert self._pending is not None
        while True:
            apply, future = await self._pending.get()
            await asyncio.sleep(self.apply_s)
            try:
                result = _dump(apply())
            except Exception as exc:  # failed while applying: only a waiting client hears
                self.errors.append(f"apply: {type(exc).__name__}: {exc}")
                future.set_exception(exc)
                future.exception()  # retrieved: nobody may be waiting
            else:
                future.set_result(result)
            self._unapplied -= 1

    async def _stop_applying(self) -> None:
        assert self._applier is not None
        self._applier.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._applier

    def unapplied(self) -> int:
        """Updates queued and not yet applied."""
        return self._unapplied

    def _scroll(self, name: str, data: Any, query: Any) -> Any:
        request = models.ScrollRequest.model_validate(data)
        records, offset = self.engine.scroll(
            name,
            scroll_filter=request.filter,
            limit=request.limit or 10,
            offset=request.offset,
            with_payload=request.with_payload if request.with_payload is not None else True,
            with_vectors=request.with_vector or False,
        )
        return {"points": [_dump(r) for r in records], "next_page_offset": offset}

    def _count(self, name: str, data: Any, query: Any) -> Any:
        request = models.CountRequest.model_validate(data)
        return _dump(self.engine.count(name, count_filter=request.filter, exact=True))

    def _query(self, name: str, data: Any, query: Any) -> Any:
        request = models.QueryRequest.model_validate(data)
        response = self.engine.query_points(
            name,
            query=request.query,
            using=request.using,
            prefetch=request.prefetch,
            query_filter=request.filter,
            search_params=request.params,
            limit=request.limit or 10,
            with_payload=request.with_payload if request.with_payload is not None else True,
            with_vectors=request.with_vector or False,
        )
        return _dump(response)

    # --- what the tests read ---------------------------------------------------------------

    def largest_body(self) -> int:
        return max((r.body_bytes for r in self.requests), default=0)

    def status_counts(self) -> Counter[int]:
        return Counter(r.status for r in self.requests)


def _is_matrix(vector: Any) -> bool:
    return isinstance(vector, list) and bool(vector) and isinstance(vector[0], list)


def _dump(value: Any) -> Any:
    """An engine result as the JSON a server sends."""
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list | tuple):
        return [_dump(v) for v in value]
    return value
