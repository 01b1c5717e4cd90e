"""Server faults for tests: the real QdrantClient, failing like a server under stress would.

A job's driver writes local-mode stores, so tests hand it a FlakyClient (`colray.ingest(..., client=)`).
"""

from __future__ import annotations

import os
import random

import httpx
from qdrant_client import QdrantClient
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

FAULT_RATE_ENV = "COLRAY_TEST_FAULT_RATE"
FAULT_LOG_ENV = "COLRAY_TEST_FAULT_LOG"


def fault(kind: int) -> Exception:
    """Real exception types qdrant-client raises for a server's transient failures."""
    return [
        ResponseHandlingException(httpx.ReadTimeout("timed out")),
        ResourceExhaustedResponse("slow down", "0"),  # 429 with Retry-After: 0
        UnexpectedResponse(503, "Service Unavailable", b"", httpx.Headers({"retry-after": "0"})),
        UnexpectedResponse(500, "Internal Server Error", b"", httpx.Headers()),
        UnexpectedResponse(502, "Bad Gateway", b"", httpx.Headers()),
    ][kind % 5]


class FlakyClient:
    """The real QdrantClient (local mode) failing a share of calls, half of them after the
    call was applied: the ambiguous case where a retry repeats a write that happened."""

    def __init__(self, inner: QdrantClient, rate: float, seed: int = 0):
        self.inner = inner
        self.rate = rate
        self.rng = random.Random(seed)
        self.calls = self.failures = 0

    def __getattr__(self, name: str):
        attr = getattr(self.inner, name)
        if not callable(attr) or name == "close":
            return attr

        def call(*args, **kwargs):
            self.calls += 1
            roll = self.rng.random()
            if roll < self.rate / 2:
                raise self._failure(name, applied=False)
            result = attr(*args, **kwargs)
            if roll < self.rate:
                raise self._failure(name, applied=True)
            return result

        return call

    def _failure(self, method: str, *, applied: bool) -> Exception:
        self.failures += 1
        _log_fault(method, applied)
        return fault(self.calls)


def _log_fault(method: str, applied: bool) -> None:
    path = os.environ.get(FAULT_LOG_ENV)
    if path:  # the test process counts the faults raised in Ray's workers
        with open(path, "a") as log:
            log.write(f"{method} {'after' if applied else 'before'}\n")
