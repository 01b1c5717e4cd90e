"""The server sink: qdrant-client against a Qdrant server (`url`) or its local mode (`path`).

Transient failures are retried with stamina's jittered exponential backoff; others are not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

import numpy as np
import pydantic
import stamina
from qdrant_client import QdrantClient, models
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from colray.config import SinkConfig
from colray.sink import (
    FinalizeResult,
    Hit,
    Point,
    QueryPlan,
    SinkError,
    VectorSpec,
    hit_from_record,
)

T = TypeVar("T")
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


def vector_params(spec: VectorSpec) -> models.VectorParams:
    return models.VectorParams(
        size=spec.dim,
        distance=models.Distance.COSINE,
        on_disk=spec.on_disk or None,
        multivector_config=models.MultiVectorConfig(
            comparator=models.MultiVectorComparator.MAX_SIM
        ),
        hnsw_config=None if spec.hnsw else models.HnswConfigDiff(m=0),
        quantization_config=(
            models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
            if spec.binary_quantization
            else None
        ),
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


class QdrantSink:
    def __init__(
        self, cfg: SinkConfig, layout: list[VectorSpec], client: QdrantClient | None = None
    ):
        self.cfg = cfg
        self.layout = layout
        self.collection = cfg.collection
        if client is not None:  # an already configured client (tests inject faults this way)
            self.client = client
        elif cfg.url:
            api_key = cfg.resolved_api_key()
            warn_if_key_in_clear(cfg.url, api_key is not None)
            self.client = QdrantClient(
                url=cfg.url,
                api_key=api_key,
                prefer_grpc=cfg.prefer_grpc,
                timeout=int(cfg.timeout_s),
                verify=cfg.verify_tls,
            )
        else:
            self.client = QdrantClient(path=cfg.path)

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in stamina.retry_context(
            on=retry_after,
            attempts=self.cfg.retry_attempts,
            timeout=self.cfg.retry_timeout_s,
            wait_initial=self.cfg.retry_wait_initial_s,
            wait_max=self.cfg.retry_wait_max_s,
            wait_jitter=self.cfg.retry_wait_initial_s,
        ):
            with attempt:
                return fn()
        raise AssertionError("unreachable: stamina re-raises the last error")

    def prepare(self) -> None:
        if self._call(lambda: self.client.collection_exists(self.collection)):
            self._check_layout()
            self._call(
                lambda: self.client.update_collection(
                    self.collection,
                    optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0),
                )
            )
            return
        try:
            self._call(
                lambda: self.client.create_collection(
                    self.collection,
                    vectors_config={spec.name: vector_params(spec) for spec in self.layout},
                    optimizers_config=models.OptimizersConfigDiff(indexing_threshold=0),
                )
            )
        except Exception:
            # A create that timed out may have happened (or another writer won the race):
            # then the retry is refused as "already exists", and the layout check decides.
            if not self._call(lambda: self.client.collection_exists(self.collection)):
                raise
            self._check_layout()

    def open_for_reading(self) -> None:
        if not self._call(lambda: self.client.collection_exists(self.collection)):
            raise SinkError(f"collection {self.collection!r} does not exist")
        self._check_layout()

    def _check_layout(self) -> None:
        info = self._call(lambda: self.client.get_collection(self.collection))
        existing = info.config.params.vectors
        existing = existing if isinstance(existing, dict) else {"": existing}
        problems = []
        for spec in self.layout:
            params = existing.get(spec.name)
            if params is None:
                problems.append(
                    f"no vector named {spec.name!r} (has: {', '.join(existing) or 'none'})"
                )
                continue
            if params.size != spec.dim:
                problems.append(f"{spec.name!r} has {params.size} dims, the model gives {spec.dim}")
            if params.distance != models.Distance.COSINE:
                problems.append(f"{spec.name!r} uses {params.distance}, expected Cosine")
            comparator = params.multivector_config.comparator if params.multivector_config else None
            if comparator != models.MultiVectorComparator.MAX_SIM:
                problems.append(f"{spec.name!r} is not a MaxSim multivector")
        if problems:
            raise SinkError(
                f"collection {self.collection!r} exists with an incompatible layout: "
                + "; ".join(problems)
                + ". Use another sink.collection or the model it was built with."
            )

    def write(self, points: list[Point]) -> None:
        # Built without pydantic's per-float validation (half the cost of a ColBERT point):
        # ids, float32 matrices and JSON-safe payloads are already what the model allows.
        structs = [
            models.PointStruct.model_construct(
                id=p.id, vector={k: v.tolist() for k, v in p.vectors.items()}, payload=p.payload
            )
            for p in points
        ]
        self._call(lambda: self.client.upsert(self.collection, points=structs, wait=True))

    def finalize(self) -> FinalizeResult:
        start = time.perf_counter()
        self._call(
            lambda: self.client.update_collection(
                self.collection,
                optimizers_config=models.OptimizersConfigDiff(
                    indexing_threshold=self.cfg.indexing_threshold_kb
                ),
            )
        )
        deadline = start + self.cfg.ready_timeout_s
        delay = 0.2
        while True:
            info = self._call(lambda: self.client.get_collection(self.collection))
            if info.status == models.CollectionStatus.GREEN:
                return FinalizeResult(
                    "green", info.indexed_vectors_count, time.perf_counter() - start
                )
            if info.status == models.CollectionStatus.RED:
                raise SinkError(f"collection {self.collection!r} turned red while indexing")
            if info.status == models.CollectionStatus.GREY:
                # Grey means optimizations are pending until any update nudges them.
                self._call(
                    lambda: self.client.update_collection(
                        self.collection, optimizers_config=models.OptimizersConfigDiff()
                    )
                )
            if time.perf_counter() > deadline:
                raise SinkError(
                    f"collection {self.collection!r} still {info.status} after "
                    f"{self.cfg.ready_timeout_s:.0f}s (sink.ready_timeout_s)"
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def count(self) -> int:
        return self._call(lambda: self.client.count(self.collection, exact=True)).count

    def query(
        self, vector: np.ndarray, plan: QueryPlan, *, limit: int, with_vectors: bool = False
    ) -> list[Hit]:
        matrix = np.asarray(vector, np.float32).tolist()
        quantization = (
            None
            if plan.oversampling is None and plan.rescore is None
            else models.QuantizationSearchParams(
                rescore=plan.rescore, oversampling=plan.oversampling
            )
        )
        response = self._call(
            lambda: self.client.query_points(
                self.collection,
                prefetch=[
                    models.Prefetch(query=matrix, using=name, limit=plan.prefetch_limit)
                    for name in plan.prefetch
                ]
                or None,
                query=matrix,
                using=plan.using,
                limit=limit,
                search_params=models.SearchParams(quantization=quantization)
                if quantization
                else None,
                with_payload=True,
                with_vectors=with_vectors,
            )
        )
        return [hit_from_record(p) for p in response.points]

    def retrieve_all(self, *, with_vectors: bool = True) -> list[Hit]:
        hits: list[Hit] = []
        offset = None
        while True:
            records, offset = self._call(
                lambda start=offset: self.client.scroll(
                    self.collection,
                    limit=256,
                    offset=start,
                    with_payload=True,
                    with_vectors=with_vectors,
                )
            )
            hits.extend(hit_from_record(r) for r in records)
            if offset is None:
                return hits

    def close(self) -> None:
        self.client.close()
