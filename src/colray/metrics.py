"""colray's metrics for Prometheus, through Ray's own metrics export (every node's metrics agent):
rows read, points written, skips, dead letters, write retries, batch latencies, rows in flight.

Every process of a run records into the same named metrics, tagged with the run's id and the
sink's name (never a URL or a key). Outside Ray, as in a query, recording does nothing.
"""

from __future__ import annotations

import threading
from typing import Any

TAG_KEYS = ("run_id", "sink")
# Seconds: a batch write to a local store takes milliseconds; to a loaded server, seconds.
LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]

_lock = threading.Lock()
_metrics: dict[str, Any] = {}
_tags: dict[str, str] = {}


def use(tags: dict[str, str]) -> None:
    """This process records for the run `tags` names (run_id, sink), its retries included."""
    _tags.clear()
    _tags.update(tags)
    _count_retries()


def run_tags(run_id: str, sink_name: str) -> dict[str, str]:
    return {"run_id": run_id, "sink": sink_name}


def _get(name: str) -> Any:
    """The metric `name`, made on first use in this process; None outside Ray or a run."""
    if not _tags:
        return None
    import ray

    if not ray.is_initialized():
        return None
    with _lock:
        if name not in _metrics:
            _metrics[name] = _make(name)
        return _metrics[name]


# name: (kind, description, tag keys besides TAG_KEYS). Prometheus sees them as ray_<name>
# (counters with _total), since Ray's export prefixes every application metric.
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "colray_rows_read": ("counter", "Rows (or document pages) read.", ()),
    "colray_points_written": ("counter", "Points written to the sink.", ()),
    "colray_rows_skipped": ("counter", "Rows skipped: done earlier or unchanged.", ("why",)),
    "colray_dead_letters": ("counter", "Rows dead-lettered.", ("stage", "error_class")),
    "colray_write_retries": ("counter", "Sink calls retried.", ("reason",)),
    "colray_rows_in_flight": ("gauge", "Rows handed to writers, not yet written.", ()),
    "colray_write_batch_seconds": (
        "histogram",
        "Seconds per sink write batch, retries included.",
        (),
    ),
    "colray_embed_batch_seconds": (
        "histogram",
        "Seconds per embedding call (a block of rows).",
        (),
    ),
}


def _make(name: str) -> Any:
    from ray.util.metrics import Counter, Gauge, Histogram

    kind, description, extra = METRICS[name]
    tag_keys = (*TAG_KEYS, *extra)
    if kind == "histogram":
        return Histogram(name, description=description, boundaries=LATENCY_BOUNDS,
                         tag_keys=tag_keys)  # fmt: skip
    return {"counter": Counter, "gauge": Gauge}[kind](
        name, description=description, tag_keys=tag_keys
    )


def count(name: str, value: float = 1.0, **tags: str) -> None:
    metric = _get(name)
    if metric is not None and value:
        metric.inc(value, tags={**_tags, **tags})


def observe(name: str, seconds: float) -> None:
    metric = _get(name)
    if metric is not None:
        metric.observe(seconds, tags=dict(_tags))


def gauge(name: str, value: float) -> None:
    metric = _get(name)
    if metric is not None:
        metric.set(value, tags=dict(_tags))


def retry_reason(exc: BaseException) -> str:
    """A retried failure's kind, as the retries counter tags it."""
    status = getattr(exc, "status_code", None)
    if status == 429 or type(exc).__name__ == "ResourceExhaustedResponse":
        return "429"
    if isinstance(status, int) and status >= 500:
        return "5xx"
    text = f"{type(exc).__name__} {getattr(exc, 'source', '')!r}".lower()
    return "timeout" if "timeout" in text or "timed out" in text else "connection"


_retries_here = [0]  # every retry this process scheduled, for the run report


def retries_so_far() -> int:
    """Sink calls this process has retried so far (with or without Ray)."""
    return _retries_here[0]


def _count_retries() -> None:
    """Every retry stamina schedules in this process, counted by its reason."""
    import stamina.instrumentation as instrumentation

    def on_retry(details: Any) -> None:
        _retries_here[0] += 1
        count("colray_write_retries", reason=retry_reason(details.caused_by))

    instrumentation.set_on_retry_hooks([on_retry])
