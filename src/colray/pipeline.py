"""The ingest plan on Ray: read -> embed (actor pool) -> write (sink actors) -> finalize.

The driver owns the sink's lifecycle and the run's accounting: every row read ends as a point
or a dead letter, and the report says which.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from tqdm import tqdm

from colray.config import ConfigError, EmbedConfig, ImageConfig, Settings, SinkConfig
from colray.decode import HEIGHT, PIXELS, WIDTH, decode_images
from colray.embed import Embedder, load_embedder
from colray.embed.colpali import (
    ImageModelInfo,
    describe_image_model,
    pool_by_rows_and_columns,
)
from colray.embed.pooling import pool_tokens
from colray.resume import ResumeLog, content_salt, job_fingerprint
from colray.sink import Sink, SinkError, VectorSpec, open_sink
from colray.sources import (
    ERROR,
    ResolvedSource,
    SkipRules,
    read_dataset,
    resolve_source,
    with_stage_seconds,
)
from colray.writer import (
    DEAD_LETTER_SCHEMA,
    EMBED_SECONDS,
    TRUNCATED,
    BlockWriter,
    WriteOutcome,
    count_column,
    reason,
    short,
    vectors_column,
)

log = logging.getLogger("colray")
T = TypeVar("T")
R = TypeVar("R")

WRITES_IN_FLIGHT_PER_WRITER = 2
BLOCK_BYTES = 16 << 20  # ~200 MiniLM documents or ~30 ColPali pages per block to a writer


class LostRowsError(RuntimeError):
    """The pipeline's output does not account for every row the source holds."""


class TooManyFailuresError(RuntimeError):
    """The run finished, but more rows were dead-lettered than run.max_failed_fraction allows."""

    def __init__(self, report: RunReport, limit: float):
        self.report = report
        top = ", ".join(f"{k} ({n})" for k, n in list(report.dead_letter_reasons.items())[:5])
        super().__init__(
            f"{report.dead_lettered} of {report.rows_read} rows were dead-lettered "
            f"({report.dead_lettered / report.rows_read:.1%}, more than "
            f"run.max_failed_fraction={limit:g}); most common: {top}. "
            f"See {report.dead_letter_path}"
        )


@dataclass
class RunReport:
    run_id: str
    started_at: str
    finished_at: str = ""
    duration_s: float = 0.0
    source: str = ""
    model: str = ""
    sink: dict[str, Any] = field(default_factory=dict)
    rows_in_source: int = 0
    rows_read: int = 0
    points_written: int = 0
    dead_lettered: int = 0
    skipped_existing: int = 0
    duplicate_ids: int = 0  # rows whose id an earlier row of the run had (the later one wins)
    # Files whose footer could not be read: dead-lettered whole, rows unknown, not in rows_*.
    unreadable_files: int = 0
    points_in_store: int = 0
    # Seconds from the start until the first embedded block reached a writer: validation,
    # model loads and actor start-up, the fixed cost a small job mostly consists of.
    first_block_s: float | None = None
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    stages_s: dict[str, float] = field(default_factory=dict)
    rows_per_s: float = 0.0
    finalize: dict[str, Any] = field(default_factory=dict)
    # Incremental runs: rows unchanged (skipped), points updated, added and deleted.
    incremental: dict[str, int] | None = None
    # Rebuilds: the alias or pointer, the version it now serves, and the versions dropped.
    reindex: dict[str, Any] | None = None
    dead_letter_path: str = ""
    report_path: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self) -> None:
        path = Path(self.report_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())


def layout_for(cfg: EmbedConfig, embedder: Embedder) -> list[VectorSpec]:
    return [VectorSpec(cfg.vector_name, embedder.dim)]


def image_layout(cfg: ImageConfig, info: ImageModelInfo) -> list[VectorSpec]:
    """The page vector; with `pooled`, rerank-only (m=0) plus pooled vectors with HNSW."""
    original = VectorSpec(
        cfg.vector_name,
        info.dim,
        hnsw=not cfg.pooled,
        on_disk=cfg.on_disk,
        binary_quantization=cfg.binary_quantization,
    )
    return [original, *(VectorSpec(name, info.dim) for name in cfg.vector_names()[1:])]


@dataclass
class PreparedRun:
    """What the driver checked before Ray starts: the source and each configured model."""

    source: ResolvedSource
    text_embedder: Embedder | None
    image_model: ImageModelInfo | None

    def layout(self, settings: Settings) -> list[VectorSpec]:
        specs = []
        if self.text_embedder is not None:
            specs += layout_for(settings.embed, self.text_embedder)
        if self.image_model is not None:
            specs += image_layout(settings.image, self.image_model)
        return specs


def _with_vectors(
    table: pa.Table, name: str, vectors: list[bytes | None], counts: list[int]
) -> pa.Table:
    return table.append_column(vectors_column(name), pa.array(vectors, pa.binary())).append_column(
        count_column(name), pa.array(counts, pa.int32())
    )


class EmbedStage:
    """Ray Data actor: loads the model once, turns a block of rows into multivectors.

    Rows that cannot be embedded keep flowing with their error set, so the writer can
    dead-letter them; one bad row never fails its neighbours.
    """

    def __init__(self, cfg: EmbedConfig, text_column: str, sink_ready: list[Any]):
        self.cfg = cfg
        self.text_column = text_column
        self.embedder = load_embedder(cfg, use_gpu=cfg.num_gpus > 0)
        # Nothing is embedded until every writer has accepted the store's layout.
        if any(error is not None for error in ray.get(sink_ready)):
            raise RuntimeError("the sink refused this job's layout; nothing was embedded")

    def __call__(self, table: pa.Table) -> pa.Table:
        start = time.perf_counter()
        texts = table.column(self.text_column).to_pylist()
        errors = table.column(ERROR).to_pylist()
        todo = []
        for i, text in enumerate(texts):
            if errors[i] is not None:
                continue
            if text is None:
                errors[i] = reason("embed", "NullText", "text is null")
            elif not text.strip():
                errors[i] = reason("embed", "EmptyText", "text is empty or only whitespace")
            else:
                todo.append(i)
        vectors: list[bytes | None] = [None] * len(texts)
        counts = [0] * len(texts)
        truncated = [False] * len(texts)
        results = _embed_isolating(self._embed_flagged, [texts[i] for i in todo])
        for i, result in zip(todo, results, strict=True):
            if isinstance(result, str):
                errors[i] = result
            elif len(result[0]) == 0:
                errors[i] = reason("embed", "NoTokens", "no tokens left to embed")
            else:
                (array, truncated[i]), counts[i] = result, len(result[0])
                vectors[i] = array.tobytes()
        out = table.drop_columns([ERROR]).append_column(ERROR, pa.array(errors, pa.string()))
        out = _with_vectors(out, self.cfg.vector_name, vectors, counts)
        out = out.append_column(TRUNCATED, pa.array(truncated, pa.bool_()))
        return _add_stage_seconds(out, time.perf_counter() - start)

    def _embed_flagged(self, texts: list[str]) -> list[tuple[np.ndarray, bool]]:
        """Vectors with whether the text was cut at the model's limit (kept, and flagged)."""
        vectors = self.embedder.embed_documents(texts)
        flags = getattr(self.embedder, "last_truncated", None) or [False] * len(vectors)
        if self.cfg.pool_factor > 1:
            vectors = [pool_tokens(v, self.cfg.pool_factor) for v in vectors]
        return list(zip(vectors, flags, strict=True))


def _embed_isolating(embed: Callable[[list[T]], Sequence[R]], items: list[T]) -> list[R | str]:
    """Embed; if a batch fails, split it until each failing item stands alone with its error."""
    if not items:
        return []
    try:
        return list(embed(items))
    except Exception as exc:
        if len(items) == 1:
            return [reason("embed", type(exc).__name__, short(exc))]
        half = len(items) // 2
        return _embed_isolating(embed, items[:half]) + _embed_isolating(embed, items[half:])


def _add_stage_seconds(table: pa.Table, seconds: float) -> pa.Table:
    """Embedding time of these rows, added to what an earlier embed stage spent on them."""
    if EMBED_SECONDS not in table.column_names:
        return with_stage_seconds(table, EMBED_SECONDS, seconds)
    share = seconds / table.num_rows if table.num_rows else 0.0
    index = table.column_names.index(EMBED_SECONDS)
    return table.set_column(index, EMBED_SECONDS, pc.add(table.column(EMBED_SECONDS), share))


class ImageEmbedStage:
    """Ray Data actor: a ColPali-family model turns decoded pages into page multivectors.

    With the scale-ready layout it also pools each page by rows and by columns.
    """

    def __init__(self, cfg: ImageConfig, info: ImageModelInfo, sink_ready: list[Any]):
        from colray.embed.colpali import ColPaliFamilyEmbedder

        self.cfg = cfg
        self.embedder = ColPaliFamilyEmbedder(info, cfg, use_gpu=cfg.num_gpus > 0)
        if any(error is not None for error in ray.get(sink_ready)):
            raise RuntimeError("the sink refused this job's layout; nothing was embedded")

    def __call__(self, table: pa.Table) -> pa.Table:
        from PIL import Image

        start = time.perf_counter()
        errors = table.column(ERROR).to_pylist()
        pixels = table.column(PIXELS).to_pylist()
        sizes = zip(table.column(WIDTH).to_pylist(), table.column(HEIGHT).to_pylist(), strict=True)
        todo = [i for i, error in enumerate(errors) if error is None]
        images = {
            i: Image.frombytes("RGB", (w, h), pixels[i])
            for i, (w, h) in enumerate(sizes)
            if errors[i] is None
        }
        names = self.cfg.vector_names()
        columns: dict[str, list[bytes | None]] = {n: [None] * len(errors) for n in names}
        counts: dict[str, list[int]] = {n: [0] * len(errors) for n in names}
        results = _embed_isolating(self.embedder.embed_images, [images[i] for i in todo])
        for i, result in zip(todo, results, strict=True):
            if isinstance(result, str):
                errors[i] = result
                continue
            arrays = [result.vectors]
            if self.cfg.pooled:
                try:
                    arrays += list(pool_by_rows_and_columns(result))
                except ValueError as exc:
                    errors[i] = reason("embed", "NoPatchGrid", str(exc))
                    continue
            for name, array in zip(names, arrays, strict=True):
                columns[name][i], counts[name][i] = array.tobytes(), len(array)
        out = table.drop_columns([ERROR, PIXELS, WIDTH, HEIGHT])
        out = out.append_column(ERROR, pa.array(errors, pa.string()))
        for name in names:
            out = _with_vectors(out, name, columns[name], counts[name])
        return _add_stage_seconds(out, time.perf_counter() - start)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class SinkWriter:
    """Holds one sink connection; writes blocks of embedded rows as points."""

    def __init__(
        self,
        cfg: SinkConfig,
        layout: list[VectorSpec],
        payload_columns: list[str],
        source_name: str,
    ):
        # A failed start is reported by ready(), not raised: Ray would print the actor's
        # death with a traceback, and an incompatible store is a user error, not a crash.
        self.startup_error: Exception | None = None
        self.sink: Sink | None = None
        try:
            self.sink = open_sink(cfg, layout)
            self.writer = BlockWriter(self.sink, cfg, layout, payload_columns, source_name)
        except SinkError as exc:
            self.startup_error = exc
        except Exception as exc:  # unreachable server, refused credentials, ...
            self.startup_error = SinkError(
                f"cannot open the sink ({_where(cfg)}): {type(exc).__name__}: {short(exc)}"
            )

    def ready(self) -> Exception | None:
        return self.startup_error

    def write(self, table: pa.Table, start: int | None, end: int | None) -> WriteOutcome:
        if start is not None and end is not None:
            table = table.slice(start, end - start)
        return self.writer.write(table)

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()


def prepare_run(settings: Settings) -> PreparedRun:
    """Everything that can fail on configuration, done before Ray starts."""
    source = resolve_source(settings.source)
    text_embedder = image_model = None
    if settings.source.text_column:
        try:
            text_embedder = load_embedder(settings.embed)
        except (ValueError, OSError) as exc:
            raise ConfigError([f"embed.model: {exc}"]) from None
    if settings.source.image_column:
        assert settings.image.model is not None  # the settings validator requires it
        try:
            image_model = describe_image_model(settings.image.model)
        except (ValueError, OSError) as exc:
            raise ConfigError([f"image.model: {exc}"]) from None
        if settings.image.pooled and image_model.grid is None:
            raise ConfigError(
                [
                    f"image.pooled: {image_model.family} models split pages into tiles with "
                    "no single patch grid to pool over; set image.pooled=false"
                ]
            )
    return PreparedRun(source, text_embedder, image_model)


def ensure_ray(settings: Settings) -> None:
    if ray.is_initialized():
        return
    ray.init(
        address=settings.run.ray_address,
        logging_level=logging.WARNING,
        log_to_driver=True,
        include_dashboard=False,
        configure_logging=True,
    )


def run_ingest(
    settings: Settings,
    report_path: str | os.PathLike[str] | None = None,
    *,
    incremental: bool = False,
    client: Any = None,
) -> RunReport:
    """Run one ingest job end to end and return (and write) its report.

    `incremental`: skip rows stored with the same content hash, re-embed changed ones and
    delete points whose rows left the source. `client`: an open qdrant-client to write
    through (local mode allows one per directory, so a process that also queries shares it).
    """
    started = time.perf_counter()
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    run_dir = Path(settings.run.dir) / run_id
    report = RunReport(run_id=run_id, started_at=dt.datetime.now(dt.UTC).isoformat())
    prepared = prepare_run(settings)
    source = prepared.source
    layout = prepared.layout(settings)
    report.source = source.name
    report.model = " + ".join(
        m for m in (
            settings.embed.model if prepared.text_embedder else None,
            settings.image.model if prepared.image_model else None,
        ) if m
    )  # fmt: skip
    report.sink = _describe_sink(settings.sink)
    report.rows_in_source = source.num_rows
    resume = ResumeLog(
        settings.run.dir,
        job_fingerprint(settings, layout, [f"{p.path}:{p.row_groups}" for p in source.pieces]),
    )
    finished = resume.load()
    # The driver owns the store's lifecycle: it creates or checks it before anything is
    # embedded, and switches indexing back on at the end. Writer actors only write.
    sink = _open_prepared_sink(settings.sink, layout, client)
    stored = sink.stored_hashes() if incremental else None
    prepared_s = time.perf_counter() - started

    ensure_ray(settings)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = settings.run.progress
    ctx.verbose_stats_logs = False
    # Ray Data holds a task's output until it reaches target_max_block_size (128 MiB by
    # default), which kept embedded batches from the writers until whole tasks ended.
    # It is put back when the run ends.
    default_block_size, ctx.target_max_block_size = ctx.target_max_block_size, BLOCK_BYTES
    # Blocks reach the writers in source order, so of two rows with one id the later wins
    # (exactly with one writer; with several, unless both are in flight at once).
    default_order = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    writers = _Writers(settings, layout, source, sink)
    dead_path = run_dir / "dead_letters.parquet"
    seen: set[str] | None = set() if stored is not None else None
    try:
        rules = SkipRules(
            salt=content_salt(settings, layout),
            done=ray.put(finished) if finished else None,
            stored=ray.put(stored) if stored else None,
        )
        dataset = _plan(settings, prepared, writers.ready, rules)
        # Starting execution spawns the embedder actors, whose start-up (seconds) overlaps
        # the writers' checks; the actors still wait for those checks before embedding.
        try:
            bundles = dataset.iter_internal_ref_bundles()
        finally:
            # A refused layout also stops the embedders; the writer's reason is the one to tell.
            writers_start = time.perf_counter()
            errors = [e for e in ray.get(writers.ready) if e is not None]
            writers_ready_s = time.perf_counter() - writers_start
            if errors:
                raise errors[0]
        run_dir.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(dead_path, DEAD_LETTER_SCHEMA) as dead_out:
            _dead_letter_files(source, dead_out, report)
            stage_s = _drive_writes(
                started, bundles, writers, report, dead_out, settings, resume, stored, seen
            )
        if stored is not None and seen is not None:
            _apply_deletions(sink, stored, seen, report)
        finalize_start = time.perf_counter()
        result = sink.finalize()
        report.points_in_store = sink.count()
        report.finalize = asdict(result)
        report.stages_s = {
            "prepare": round(prepared_s, 3),
            "writers_ready": round(writers_ready_s, 3),
            **{stage: round(seconds, 3) for stage, seconds in stage_s.items()},
            "finalize": round(time.perf_counter() - finalize_start, 3),
        }
    finally:
        resume.close()
        ctx.target_max_block_size = default_block_size
        ctx.execution_options.preserve_order = default_order
        writers.close()
        sink.close()
    report.duration_s = round(time.perf_counter() - started, 3)
    report.rows_per_s = round(report.rows_read / report.duration_s, 2) if report.duration_s else 0.0
    report.finished_at = dt.datetime.now(dt.UTC).isoformat()
    report.dead_letter_path = str(dead_path)
    report.report_path = str(report_path or run_dir / "report.json")
    report.save()
    accounted = report.points_written + report.dead_lettered + report.skipped_existing
    accounted += report.incremental["unchanged"] if report.incremental else 0
    if report.rows_read != report.rows_in_source or report.rows_read != accounted:
        raise LostRowsError(
            f"rows do not add up: source {report.rows_in_source}, read {report.rows_read}, "
            f"written {report.points_written}, dead-lettered {report.dead_lettered}, "
            f"skipped {report.skipped_existing}, unchanged "
            f"{report.incremental['unchanged'] if report.incremental else 0}"
        )
    resume.clear()
    failed = report.dead_lettered / report.rows_read if report.rows_read else 0.0
    if failed > settings.run.max_failed_fraction:
        raise TooManyFailuresError(report, settings.run.max_failed_fraction)
    return report


def _open_prepared_sink(cfg: SinkConfig, layout: list[VectorSpec], client: Any) -> Sink:
    """The driver's own connection, with the store created or checked against the layout."""
    sink: Sink | None = None
    try:
        sink = open_sink(cfg, layout, client)
        sink.prepare()
        return sink
    except Exception as exc:
        if sink is not None:
            sink.close()
        if isinstance(exc, SinkError):
            raise
        # Unreachable server, refused credentials, ...: said without the key.
        raise SinkError(
            f"cannot open the sink ({_where(cfg)}): {type(exc).__name__}: {short(exc)}"
        ) from None


def _apply_deletions(
    sink: Sink, stored: dict[str, str | None], seen: set[str], report: RunReport
) -> None:
    """Delete the points whose rows left the source (incremental runs)."""
    assert report.incremental is not None
    vanished = [point_id for point_id in stored if point_id not in seen]
    if vanished and (
        report.unreadable_files or report.dead_letter_reasons.get("read: UnreadableData")
    ):
        # Rows of an unreadable file are unknown: their points must not be taken for gone.
        log.warning(
            "%d stored points have no row in what could be read, but part of the source was "
            "unreadable: nothing deleted",
            len(vanished),
        )
        vanished = []
    sink.delete(vanished)
    report.incremental["deleted"] = len(vanished)


def _dead_letter_files(source: ResolvedSource, out: pq.ParquetWriter, report: RunReport) -> None:
    if not source.unreadable:
        return
    report.unreadable_files = len(source.unreadable)
    entries = [
        {"point_id": None, "row_key": None, "source_location": relative, "stage": "read",
         "error_class": "UnreadableFile", "error": why[:1000]}
        for relative, why in source.unreadable
    ]  # fmt: skip
    out.write_table(pa.Table.from_pylist(entries, DEAD_LETTER_SCHEMA))
    log.warning("%d source file(s) could not be read; see the dead letters", len(entries))


def _plan(
    settings: Settings, prepared: PreparedRun, sink_ready: list[Any], rules: SkipRules
) -> ray.data.Dataset:
    """read -> [decode images] -> [embed text] -> [embed images]: the stages the job needs."""
    dataset = read_dataset(prepared.source, rules)
    if prepared.image_model is not None:
        assert settings.source.image_column is not None
        dataset = dataset.map_batches(
            decode_images,
            fn_kwargs={
                "image_column": settings.source.image_column,
                "geometry": prepared.image_model.geometry,
                "max_pixels": settings.image.max_pixels,
            },
            compute=ray.data.TaskPoolStrategy(),
            num_cpus=settings.image.decode_cpus,
            batch_size=settings.image.rows_per_call,
            batch_format="pyarrow",
        )
    if prepared.text_embedder is not None:
        text_args = {"cfg": settings.embed, "text_column": settings.source.text_column}
        dataset = _actor_stage(dataset, EmbedStage, settings.embed, text_args, sink_ready)
    if prepared.image_model is not None:
        image_args = {"cfg": settings.image, "info": prepared.image_model}
        dataset = _actor_stage(dataset, ImageEmbedStage, settings.image, image_args, sink_ready)
    return dataset


def _actor_stage(
    dataset: ray.data.Dataset,
    stage: type,
    cfg: EmbedConfig | ImageConfig,
    args: dict[str, Any],
    sink_ready: list[Any],
) -> ray.data.Dataset:
    """An embedding stage: a pool of actors, each loading its model once."""
    return dataset.map_batches(
        stage,
        fn_constructor_kwargs={**args, "sink_ready": sink_ready},
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.num_gpus or None,
        batch_size=cfg.rows_per_call,
        batch_format="pyarrow",
    )


class _Writers:
    """Where embedded blocks are written.

    A Qdrant server gets `sink.writers` actors. Edge and local mode lock their directory to one
    process, so the driver, which already holds it open, writes those itself: the store stays
    on the machine the job was started from, and the driver's process may query it meanwhile.
    """

    def __init__(
        self, settings: Settings, layout: list[VectorSpec], source: ResolvedSource, sink: Sink
    ):
        cfg = settings.sink
        args = (cfg, layout, settings.source.payload_columns, source.name)
        self.local: BlockWriter | None = None
        self.actors: list[Any] = []
        if cfg.kind == "edge" or cfg.path is not None:
            self.local = BlockWriter(sink, *args)
        else:
            self.actors = [SinkWriter.remote(*args) for _ in range(cfg.writers)]
        self.ready = [w.ready.remote() for w in self.actors]
        self.load = [0] * len(self.actors)

    def close(self) -> None:
        for writer in self.actors:
            try:
                ray.get(writer.close.remote())
            except Exception as exc:  # never let cleanup hide the error that got us here
                log.warning("closing a sink writer failed: %s", short(exc))
            finally:
                ray.kill(writer)


def _drive_writes(
    started: float,
    bundles: Any,
    writers: _Writers,
    report: RunReport,
    dead_out: pq.ParquetWriter,
    settings: Settings,
    resume: ResumeLog,
    stored: dict[str, str | None] | None,
    seen: set[str] | None,
) -> dict[str, float]:
    """Hand each embedded block to the least busy writer actor (the data never passes the
    driver), or write it here for a local store.

    Returns the seconds each stage (read, embed, write) spent, summed over the cluster.
    """
    in_flight: dict[Any, int] = {}
    stage_s: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    if stored is not None:
        report.incremental = {"unchanged": 0, "updated": 0, "added": 0, "deleted": 0}
    bar = tqdm(
        total=report.rows_in_source, unit="row", desc="written", disable=not settings.run.progress
    )

    def collect(outcome: WriteOutcome) -> None:
        report.rows_read += outcome.rows
        report.points_written += outcome.points_written
        report.dead_lettered += len(outcome.dead_letters)
        report.skipped_existing += outcome.skipped
        report.duplicate_ids += outcome.duplicates
        stage_s.update({**outcome.upstream_seconds, "write": outcome.seconds})
        dead_ids = [d["point_id"] for d in outcome.dead_letters if d["point_id"]]
        if outcome.dead_letters:
            dead_out.write_table(pa.Table.from_pylist(outcome.dead_letters, DEAD_LETTER_SCHEMA))
            reasons.update(f"{d['stage']}: {d['error_class']}" for d in outcome.dead_letters)
        if report.incremental is not None and stored is not None and seen is not None:
            updated = sum(point_id in stored for point_id in outcome.written_ids)
            report.incremental["unchanged"] += outcome.unchanged
            report.incremental["updated"] += updated
            report.incremental["added"] += outcome.points_written - updated
            seen.update(outcome.written_ids, outcome.skipped_ids, dead_ids)
        bar.update(outcome.rows)
        # Only now, with the points in the store, may a restarted run skip these rows.
        resume.record(outcome.written_ids + dead_ids)

    def collect_one() -> None:
        done, _ = ray.wait(list(in_flight), num_returns=1)
        writers.load[in_flight.pop(done[0])] -= 1
        collect(ray.get(done[0]))

    # Bundles come from iter_internal_ref_bundles: block references, never the blocks
    # (a Ray DeveloperAPI; its shape is pinned by ray 2.60.x in pyproject.toml).
    for bundle in bundles:
        if report.first_block_s is None:
            report.first_block_s = round(time.perf_counter() - started, 3)
        for entry, block_slice in zip(bundle.blocks, bundle.slices, strict=True):
            start = block_slice.start_offset if block_slice else None
            end = block_slice.end_offset if block_slice else None
            if writers.local is not None:
                table = ray.get(entry.ref)
                if start is not None and end is not None:
                    table = table.slice(start, end - start)
                collect(writers.local.write(table))
                continue
            while len(in_flight) >= WRITES_IN_FLIGHT_PER_WRITER * len(writers.actors):
                collect_one()
            target = min(range(len(writers.actors)), key=writers.load.__getitem__)
            in_flight[writers.actors[target].write.remote(entry.ref, start, end)] = target
            writers.load[target] += 1
    while in_flight:
        collect_one()
    bar.close()
    report.dead_letter_reasons = dict(reasons.most_common())
    return dict(stage_s)


def _where(cfg: SinkConfig) -> str:
    return str(_describe_sink(cfg)["where"])


def _describe_sink(cfg: SinkConfig) -> dict[str, Any]:
    """The sink as the report shows it: where, never credentials."""
    where = cfg.url or cfg.path
    if cfg.url:  # user:password@ and ?api-key= would leak credentials
        parts = urlsplit(cfg.url)
        host = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname or ""
        where = urlunsplit((parts.scheme, host, parts.path, "", ""))
    return {
        "kind": cfg.kind,
        "where": where,
        "collection": cfg.collection if cfg.kind == "qdrant" else None,
    }
