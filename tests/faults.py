"""Server faults for tests: the real QdrantClient, failing like a server under stress would.

A job's driver writes local-mode stores, so tests hand it a FlakyClient (`colray.ingest(..., client=)`).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from qdrant_client import QdrantClient
from qdrant_client.common.client_exceptions import ResourceExhaustedResponse
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Processes started inside it take Ctrl-C (SIGINT) as a user's terminal would send it.

    A shell starts background jobs with SIGINT ignored (CI's `bash .ci/run &`, nohup'd runs),
    children inherit an ignored signal across exec, and Python then installs no
    KeyboardInterrupt: the job under test would never see the Ctrl-C. A handled signal is
    reset to the default across exec, so handling it here gives the child Python's default."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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


def kill_midway_then_rerun(
    config: Path, run_dir: Path, report: Path, after: int
) -> tuple[int, subprocess.CompletedProcess]:
    """`colray ingest` in its own process, SIGKILLed once `after` rows are marked done in its
    resume log, then run again to the end: (distinct rows the first run had marked done, the
    second run)."""
    command = [sys.executable, "-m", "colray.cli", "ingest", "--config", str(config)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    logs: list[Path] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        logs = list(run_dir.glob("resume/*/done.log"))
        if logs and len(logs[0].read_text().splitlines()) >= after:
            break
        time.sleep(0.1)
    assert first.poll() is None, "the run ended before it could be killed"
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = len(set(logs[0].read_text().split()))
    for _ in range(30):  # Ray tears the killed driver's job down; its store lock goes with it
        second = subprocess.run([*command, "--report", str(report)], capture_output=True,
                                text=True)  # fmt: skip
        if "open in another process" not in second.stderr:
            break
        time.sleep(1)
    return done, second
