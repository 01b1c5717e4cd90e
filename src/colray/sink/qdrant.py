"""The server sink: qdrant-client against a Qdrant server (`url`) or its local mode (`path`).

Transient failures are retried with stamina's jittered exponential backoff; others are not.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import numpy as np
import pydantic
import stamina
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from tqdm import tqdm

from colray.config import SinkConfig
from colray.errors import IndexingTimeout, RunFailed
from colray.layout import MIGRATE_HINT, QueryPlan, VectorSpec, layout_problems
from colray.rows import short
from colray.sink import (
    HASH_PAYLOAD_KEY,
    SCROLL_PAGE,
    FinalizeResult,
    Hit,
    Point,
    RetriesExhausted,
    SinkError,
    hit_from_record,
    query_for,
    stored_hash,
    wire_id,
)

T = TypeVar("T")
P = ParamSpec("P")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
log = logging.getLogger("colray")


def is_transient(exc: BaseException) -> bool:
    """Failures a retry can fix: timeouts, resets, overload. Never 400/401/403/404/422."""
    if isinstance(exc, ResourceExhaustedResponse):
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in TRANSIENT_STATUS
    if isinstance(exc, ResponseHandlingException):
        # Also raised when a response fails validation, which no retry changes.
        return not isinstance(exc.source, pydantic.ValidationError)
    try:
        import grpc

        if isinstance(exc, grpc.RpcError):
            return exc.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    except ImportError:
        pass
    return isinstance(exc, ConnectionError | TimeoutError)


DISTANCES = {"cosine": models.Distance.COSINE, "dot": models.Distance.DOT}
DATATYPES = {"float32": models.Datatype.FLOAT32, "float16": models.Datatype.FLOAT16}


def vector_params(spec: VectorSpec) -> models.VectorParams:
    return models.VectorParams(
        size=spec.dim,
        distance=DISTANCES[spec.distance],
        on_disk=spec.on_disk or None,
        multivector_config=models.MultiVectorConfig(comparator=models.MultiVectorComparator.MAX_SIM)
        if spec.multivector
        else None,
        hnsw_config=None if spec.hnsw else models.HnswConfigDiff(m=0),
        quantization_config=(
            models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
            if spec.binary_quantization
            else None
        ),
        datatype=DATATYPES[spec.datatype] if spec.datatype != "float32" else None,
    )


def stored_spec(name: str, params: models.VectorParams) -> VectorSpec:
    """A collection's vector as colray describes it, to compare with a job's layout."""
    distance = {v: k for k, v in DISTANCES.items()}.get(params.distance, str(params.distance))
    datatype = {v: k for k, v in DATATYPES.items()}.get(params.datatype, str(params.datatype))
    return VectorSpec(
        name,
        params.size,
        hnsw=not (params.hnsw_config is not None and params.hnsw_config.m == 0),
        multivector=params.multivector_config is not None,
        distance=distance,  # type: ignore[arg-type]
        datatype="float32" if params.datatype is None else datatype,  # type: ignore[arg-type]
    )


def retry_after(exc: BaseException) -> bool | float:
    """stamina's backoff hook: the server's Retry-After when it sent one, else transient or not."""
    if isinstance(exc, ResourceExhaustedResponse):
        return float(exc.retry_after_s)
    if isinstance(exc, UnexpectedResponse) and exc.status_code in {429, 503}:
        value = exc.headers.get("retry-after") if exc.headers else None
        if value and value.strip().isdigit():
            return float(value)
    return is_transient(exc)


def warn_if_key_in_clear(url: str, has_key: bool) -> None:
    parts = urlsplit(url)
    if has_key and parts.scheme == "http" and parts.hostname not in LOOPBACK:
        log.warning(
            "sink.url uses plain http to %s: the API key would travel unencrypted; use https",
            parts.hostname,
        )


def make_client(cfg: SinkConfig) -> QdrantClient:
    if cfg.url:
        api_key = cfg.resolved_api_key()
        warn_if_key_in_clear(cfg.url, api_key is not None)
        return QdrantClient(
            url=cfg.url,
            api_key=api_key,
            prefer_grpc=cfg.prefer_grpc,
            timeout=int(cfg.timeout_s),
            verify=cfg.verify_tls,
        )
    return QdrantClient(path=cfg.path)


class RetryingCalls:
    """Client calls retried on transient failures with stamina's jittered backoff, as the sink
    settings give it; once the retries are spent, RetriesExhausted with the last error."""

    def __init__(self, cfg: SinkConfig):
        self.caller = stamina.RetryingCaller(
            attempts=cfg.retry_attempts,
            timeout=cfg.retry_timeout_s,
            wait_initial=cfg.retry_wait_initial_s,
            wait_max=cfg.retry_wait_max_s,
            wait_jitter=cfg.retry_wait_initial_s,
        ).on(retry_after)

    def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return self.caller(fn, *args, **kwargs)
        except Exception as exc:
            if is_transient(exc):
                raise RetriesExhausted(f"{type(exc).__name__}: {short(exc)}") from None
            raise


class QdrantSink:
    def __init__(
        self, cfg: SinkConfig, layout: list[VectorSpec], client: QdrantClient | None = None
    ):
        self.cfg = cfg
        self.layout = layout
        self.collection = cfg.collection
        # An injected client stays open after close(): its owner shares it (local mode's
        # one client per directory), or configured it (tests inject faults this way).
        self.owns_client = client is None
        self.client = client if client is not None else make_client(cfg)
        self._call = RetryingCalls(cfg)
        self.optimizations_endpoint = True  # until the server shows it has none

    def prepare(self) -> None:
        if self._exists():
            self._check_layout()
            self._call(
                self.client.update_collection,
                self.collection,
                optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0),
            )
            return
        try:
            self._call(
                self.client.create_collection,
                self.collection,
                vectors_config={spec.name: vector_params(spec) for spec in self.layout},
                optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0),
            )
        except Exception:
            # A create that timed out may have happened (or another writer won the race):
            # then the retry is refused as "already exists", and the layout check decides.
            if not self._exists():
                raise
            self._check_layout()

    def _exists(self) -> bool:
        """The collection, or an alias of one (as `colray reindex` serves it), exists."""
        if self._call(self.client.collection_exists, self.collection):
            return True
        aliases = self._call(self.client.get_aliases).aliases
        return any(a.alias_name == self.collection for a in aliases)

    def open_for_reading(self) -> None:
        if not self._exists():
            raise SinkError(f"collection {self.collection!r} does not exist")
        self._check_layout(for_writing=False)

    def layout_problems(self, *, for_writing: bool = True) -> list[str]:
        if not self._exists():
            return []
        info = self._call(self.client.get_collection, self.collection)
        existing = info.config.params.vectors
        existing = existing if isinstance(existing, dict) else {"": existing}
        found = {name: stored_spec(name, params) for name, params in existing.items()}
        return layout_problems(self.layout, found, for_writing=for_writing)

    def _check_layout(self, *, for_writing: bool = True) -> None:
        problems = self.layout_problems(for_writing=for_writing)
        if problems:
            raise SinkError(
                f"collection {self.collection!r} exists with an incompatible layout: "
                + "; ".join(problems)
                + f". {MIGRATE_HINT}"
            )

    def write(self, points: list[Point]) -> None:
        # Built without pydantic's per-float validation (half the cost of a ColBERT point):
        # ids, float32 matrices and JSON-safe payloads are already what the model allows.
        structs = [
            models.PointStruct.model_construct(
                id=wire_id(p.id),
                vector={k: v.tolist() for k, v in p.vectors.items()},
                payload=p.payload,
            )
            for p in points
        ]
        self._call(self.client.upsert, self.collection, points=structs, wait=self.cfg.upsert_wait)

    def _barrier(self) -> None:
        """Wait until every update queued before now is applied: a shard applies updates in
        order, so a waited-for no-op comes back after all of them. A filter no point matches
        reaches every shard (an empty id list reaches none and is refused)."""
        nothing = models.FieldCondition(key="_colray.barrier", match=models.MatchValue(value=1))
        self._call(
            self.client.delete,
            self.collection,
            points_selector=models.FilterSelector(filter=models.Filter(must=[nothing])),
            wait=True,
        )

    def finalize(
        self, *, progress: bool = False, on_progress: Callable[[dict[str, Any]], None] | None = None
    ) -> FinalizeResult:
        start = time.perf_counter()
        if not self.cfg.upsert_wait:
            self._barrier()
        self._call(
            self.client.update_collection,
            self.collection,
            optimizers_config=models.OptimizersConfigDiff(
                indexing_threshold=self.cfg.indexing_threshold_kb
            ),
        )
        watch = IndexingWatch(self.collection, start, show=progress, on_progress=on_progress)
        try:
            return self._wait_until_ready(watch, start + self.cfg.ready_timeout_s)
        finally:
            watch.close()

    def _wait_until_ready(self, watch: IndexingWatch, deadline: float) -> FinalizeResult:
        delay = 0.2
        while True:
            info = self._call(self.client.get_collection, self.collection)
            status = str(getattr(info.status, "value", info.status))
            watch.observe(status, info.indexed_vectors_count, info.points_count, self._queued())
            if info.status == models.CollectionStatus.GREEN:
                return watch.result(status, info.indexed_vectors_count, info.points_count)
            if info.status == models.CollectionStatus.RED:
                raise RunFailed(f"collection {self.collection!r} turned red while indexing")
            if info.status == models.CollectionStatus.GREY:
                # Grey means optimizations are pending until any update nudges them.
                self._call(
                    self.client.update_collection,
                    self.collection,
                    optimizers_config=models.OptimizersConfigDiff(),
                )
            if time.perf_counter() > deadline:
                raise IndexingTimeout(
                    f"collection {self.collection!r} still {status} after "
                    f"{self.cfg.ready_timeout_s:.0f}s (sink.ready_timeout_s)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _queued(self) -> int | None:
        """Points waiting to be indexed, from Qdrant 1.17's optimizations endpoint; None where
        the server has none (older servers, local mode)."""
        if not self.optimizations_endpoint:
            return None
        try:
            return int(
                self._call(self.client.get_optimizations, self.collection).summary.queued_points
            )
        except Exception:  # 404 on older servers, NotImplementedError in local mode
            self.optimizations_endpoint = False
            return None

    def count(self) -> int:
        return self._call(self.client.count, self.collection, exact=True).count

    def query(
        self,
        query: np.ndarray | Mapping[str, np.ndarray],
        plan: QueryPlan,
        *,
        limit: int,
        with_vectors: bool = False,
    ) -> list[Hit]:
        quantization = (
            None
            if plan.oversampling is None and plan.rescore is None
            else models.QuantizationSearchParams(
                rescore=plan.rescore, oversampling=plan.oversampling
            )
        )
        response = self._call(
            self.client.query_points,
            self.collection,
            prefetch=[
                models.Prefetch(query=query_for(query, name), using=name, limit=plan.prefetch_limit)
                for name in plan.prefetch
            ]
            or None,
            query=query_for(query, plan.using),
            using=plan.using,
            limit=limit,
            search_params=models.SearchParams(quantization=quantization) if quantization else None,
            with_payload=True,
            with_vectors=with_vectors,
        )
        return [hit_from_record(p) for p in response.points]

    def _scroll(self, page: int, **what: Any) -> Iterator[Any]:
        """Every record, page by page, each page a retried call."""
        offset = None
        while True:
            records, offset = self._call(
                self.client.scroll, self.collection, limit=page, offset=offset, **what
            )
            yield from records
            if offset is None:
                return

    def points(self, *, with_vectors: bool = True) -> Iterator[Hit]:
        return (
            hit_from_record(r)
            for r in self._scroll(256, with_payload=True, with_vectors=with_vectors)
        )

    def retrieve_all(self, *, with_vectors: bool = True) -> list[Hit]:
        return list(self.points(with_vectors=with_vectors))

    def stored_hashes(self) -> dict[str, str | None]:
        only_hash = models.PayloadSelectorInclude(include=[HASH_PAYLOAD_KEY])
        return {
            str(r.id): stored_hash(r.payload)
            for r in self._scroll(SCROLL_PAGE, with_payload=only_hash, with_vectors=False)
        }

    def delete(self, point_ids: list[str]) -> None:
        for start in range(0, len(point_ids), SCROLL_PAGE):
            chunk: list[models.ExtendedPointId] = [
                wire_id(i) for i in point_ids[start : start + SCROLL_PAGE]
            ]
            self._call(
                self.client.delete,
                self.collection,
                points_selector=models.PointIdsList(points=chunk),
                wait=True,
            )

    def close(self) -> None:
        if self.owns_client:
            self.client.close()


class IndexingWatch:
    """What the server says while it indexes: a progress bar, and the report's record."""

    KEPT = 20  # observations kept for the report: the first, each change, the last ones

    def __init__(
        self,
        collection: str,
        start: float,
        *,
        show: bool,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.start = start
        self.on_progress = on_progress
        self.bar = tqdm(desc=f"indexing {collection}", unit="pt", disable=not show)
        self.observed: list[dict[str, Any]] = []

    def observe(
        self, status: str, indexed: int | None, points: int | None, queued: int | None
    ) -> None:
        entry = {"s": round(time.perf_counter() - self.start, 2), "status": status,
                 "indexed_vectors": indexed, "queued_points": queued}  # fmt: skip
        if not self.observed or {**self.observed[-1], "s": 0} != {**entry, "s": 0}:
            self.observed.append(entry)
            self.observed = self.observed[:1] + self.observed[1:][-(self.KEPT - 1) :]
        if self.on_progress is not None:
            self.on_progress({**entry, "points": points})
        if points is not None:
            self.bar.total = points
            done = points - queued if queued is not None else min(indexed or 0, points)
            self.bar.n = done if status != "green" else points
            self.bar.set_postfix_str(status, refresh=False)
            self.bar.refresh()

    def result(self, status: str, indexed: int | None, points: int | None) -> FinalizeResult:
        seconds = time.perf_counter() - self.start
        return FinalizeResult(status, indexed, seconds, points, self.observed)

    def close(self) -> None:
        self.bar.close()


class CollectionVersions:
    """Collections `<alias>__v<time>`, served through the alias `sink.collection`."""

    def __init__(self, cfg: SinkConfig, client: QdrantClient):
        self.cfg = cfg
        self.alias = self.served_as = cfg.collection
        self.client = client
        self.pattern = re.compile(re.escape(self.alias) + r"__v\d{20}")
        self._call = RetryingCalls(cfg)

    def live(self) -> str | None:
        for alias in self._call(self.client.get_aliases).aliases:
            if alias.alias_name == self.alias:
                return alias.collection_name.removeprefix(self.alias + "__")
        if self.alias in self._collections():
            raise SinkError(
                f"{self.alias!r} is a collection, not an alias: reindex serves queries through "
                f"an alias of that name. `colray reindex --adopt` builds a new version, then "
                f"deletes this collection and puts the alias in its place (Qdrant cannot "
                f"rename a collection; its readers see a short gap), or rebuild under a new "
                f"sink.collection once."
            )
        return None

    def is_plain(self) -> bool:
        return self.alias in self._collections()

    def retire_plain(self) -> None:
        self._call(self.client.delete_collection, self.alias)

    def all(self) -> list[str]:
        names = self._collections()
        return sorted(n.removeprefix(self.alias + "__") for n in names if self.pattern.fullmatch(n))

    def _collections(self) -> set[str]:
        return {c.name for c in self._call(self.client.get_collections).collections}

    def sink_for(self, version: str) -> SinkConfig:
        return self.cfg.model_copy(update={"collection": f"{self.alias}__{version}"})

    def switch(self, version: str) -> None:
        # One request: Qdrant applies the alias changes atomically, so no query finds the
        # alias missing or half-moved.
        operations: list[models.AliasOperations] = []
        if self.live() is not None:
            operations.append(
                models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=self.alias))
            )
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(
                    collection_name=f"{self.alias}__{version}", alias_name=self.alias
                )
            )
        )
        # A retry after an applied-but-failed call is refused (alias exists); it then checks.
        try:
            self._call(self.client.update_collection_aliases, change_aliases_operations=operations)
        except Exception:
            if self.live() != version:
                raise

    def drop(self, version: str) -> None:
        self._call(self.client.delete_collection, f"{self.alias}__{version}")
