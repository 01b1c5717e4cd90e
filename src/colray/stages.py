"""The embedding stages: Ray Data actors that load a model once and add vector columns to blocks.

Rows that cannot be embedded keep flowing with their reason set; one bad row never fails its
neighbours. Each stage reads and writes only the row contract's columns (`colray.rows`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import ray

from colray import metrics
from colray.config import EmbedConfig, ImageConfig
from colray.embed import DocumentVectors, Embedder, load_embedder
from colray.embed.colpali import (
    ColPaliFamilyEmbedder,
    ImageModelInfo,
    PageEmbedding,
    pool_by_rows_and_columns,
)
from colray.embed.muvera import Muvera, muvera_for
from colray.embed.pooling import pool_tokens
from colray.layout import image_vector_names, muvera_vector_name
from colray.rows import (
    EMBED,
    EMBED_SECONDS,
    ERROR,
    FIRST_STAGE_SECONDS,
    HEIGHT,
    NO_TEXT,
    PIXELS,
    TRUNCATED,
    WIDTH,
    reason,
    short,
    with_errors,
    with_stage_seconds,
    with_vectors,
)

T = TypeVar("T")
R = TypeVar("R")


def wait_for_sink(sink_ready: list[Any]) -> None:
    """Nothing is embedded until every writer has accepted the store's layout (none to wait
    for in this process: the driver checked its own store)."""
    if sink_ready and any(error is not None for error in ray.get(sink_ready)):
        raise RuntimeError("the sink refused this job's layout; nothing was embedded")


class EmbedStage:
    """Text rows to token multivectors (pooled when `pool_factor` > 1), flagged when cut."""

    def __init__(
        self,
        cfg: EmbedConfig,
        text_column: str,
        sink_ready: list[Any],
        optional: bool = False,
        tags: dict[str, str] | None = None,
    ):
        metrics.use(tags or {})
        self.cfg = cfg
        self.text_column = text_column
        # Optional text (a page's text layer): a row without any gets no text vector and is
        # flagged instead of dead-lettered.
        self.optional = optional
        self._embedder: Embedder | None = None
        self.muvera: Muvera | None = None
        wait_for_sink(sink_ready)

    @property
    def embedder(self) -> Embedder:
        """The model, loaded at the first row to embed: a run whose rows are all unchanged or
        done (an incremental no-op, a resumed run) never waits for it."""
        if self._embedder is None:
            self._embedder = load_embedder(self.cfg, use_gpu=self.cfg.num_gpus > 0)
            if self.cfg.first_stage == "muvera":
                self.muvera = muvera_for(self.cfg, self._embedder.dim)
        return self._embedder

    def __call__(self, table: pa.Table) -> pa.Table:
        start = time.perf_counter()
        texts = table.column(self.text_column).to_pylist()
        errors = table.column(ERROR).to_pylist()
        todo = []
        missing = [False] * len(texts)
        for i, text in enumerate(texts):
            if errors[i] is not None:
                continue
            if self.optional and not (text or "").strip():
                missing[i] = True
            elif text is None:
                errors[i] = reason(EMBED, "NullText", "text is null")
            elif not text.strip():
                errors[i] = reason(EMBED, "EmptyText", "text is empty or only whitespace")
            else:
                todo.append(i)
        matrices: dict[int, np.ndarray] = {}
        truncated = [False] * len(texts)
        if todo:
            # Loaded outside the isolation: a model that cannot load fails the run, it does
            # not dead-letter every row as if each one were at fault.
            _ = self.embedder
        results = embed_isolating(self._encode, [texts[i] for i in todo])
        for i, result in zip(todo, results, strict=True):
            if isinstance(result, str):
                errors[i] = result
            elif len(result.vectors) == 0:
                errors[i] = reason(EMBED, "NoTokens", "no tokens left to embed")
            else:
                matrices[i], truncated[i] = result.vectors, result.truncated
        out = with_errors(table, errors)
        out = _with_arrays(out, self.cfg.vector_name, matrices, len(texts))
        first_stage_s = 0.0
        if self.cfg.first_stage == "muvera":
            began = time.perf_counter()
            encoded = {}
            if matrices:
                assert self.muvera is not None  # made with the model, which embedded these
                encoded = {i: self.muvera.encode_document(m)[None] for i, m in matrices.items()}
            first_stage_s = time.perf_counter() - began
            out = _with_arrays(out, muvera_vector_name(self.cfg), encoded, len(texts))
        out = out.append_column(TRUNCATED, pa.array(truncated, pa.bool_()))
        if self.optional:
            out = out.append_column(NO_TEXT, pa.array(missing, pa.bool_()))
        out = with_stage_seconds(out, FIRST_STAGE_SECONDS, first_stage_s)
        metrics.observe("colray_embed_batch_seconds", time.perf_counter() - start)
        return with_stage_seconds(out, EMBED_SECONDS, time.perf_counter() - start)

    def _encode(self, texts: list[str]) -> list[DocumentVectors]:
        documents = self.embedder.encode_documents(texts)
        if self.cfg.pool_factor > 1:
            documents = [d._replace(vectors=pool_tokens(d.vectors, self.cfg.pool_factor))
                         for d in documents]  # fmt: skip
        return documents


def _with_arrays(table: pa.Table, name: str, arrays: dict[int, np.ndarray], rows: int) -> pa.Table:
    """The table with a named vector's columns for the rows in `arrays` (the others null)."""
    blobs: list[bytes | None] = [None] * rows
    counts = [0] * rows
    for i, array in arrays.items():
        blobs[i], counts[i] = array.tobytes(), len(array)
    return with_vectors(table, name, blobs, counts)


def embed_isolating(embed: Callable[[list[T]], Sequence[R]], items: list[T]) -> list[R | str]:
    """Embed; if a batch fails, split it until each failing item stands alone with its reason."""
    if not items:
        return []
    try:
        return list(embed(items))
    except Exception as exc:
        if len(items) == 1:
            return [reason(EMBED, type(exc).__name__, short(exc))]
        half = len(items) // 2
        return embed_isolating(embed, items[:half]) + embed_isolating(embed, items[half:])


class ImageEmbedStage:
    """Decoded pages to page multivectors with a ColPali-family model; with the scale-ready
    layout, each page pooled by rows and by columns as well."""

    def __init__(
        self,
        cfg: ImageConfig,
        info: ImageModelInfo,
        sink_ready: list[Any],
        tags: dict[str, str] | None = None,
    ):
        metrics.use(tags or {})
        self.cfg = cfg
        self.names = image_vector_names(cfg)
        self.info = info
        self._embedder: ColPaliFamilyEmbedder | None = None
        wait_for_sink(sink_ready)

    @property
    def embedder(self) -> ColPaliFamilyEmbedder:
        """The model, loaded at the first page to embed (as for text)."""
        if self._embedder is None:
            from colray.embed.colpali import ColPaliFamilyEmbedder

            self._embedder = ColPaliFamilyEmbedder(
                self.info, self.cfg, use_gpu=self.cfg.num_gpus > 0
            )
        return self._embedder

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
        columns: dict[str, list[bytes | None]] = {n: [None] * len(errors) for n in self.names}
        counts: dict[str, list[int]] = {n: [0] * len(errors) for n in self.names}
        results: list[PageEmbedding | str] = []
        if todo:  # the model loads here, outside the isolation, as for text
            results = embed_isolating(self.embedder.embed_images, [images[i] for i in todo])
        for i, result in zip(todo, results, strict=True):
            arrays = result if isinstance(result, str) else self._arrays(result)
            if isinstance(arrays, str):
                errors[i] = arrays
                continue
            for name, array in zip(self.names, arrays, strict=True):
                columns[name][i], counts[name][i] = array.tobytes(), len(array)
        out = with_errors(table.drop_columns([PIXELS, WIDTH, HEIGHT]), errors)
        for name in self.names:
            out = with_vectors(out, name, columns[name], counts[name])
        metrics.observe("colray_embed_batch_seconds", time.perf_counter() - start)
        return with_stage_seconds(out, EMBED_SECONDS, time.perf_counter() - start)

    def _arrays(self, page: PageEmbedding) -> list[np.ndarray] | str:
        """The page's vectors in layout order, or why it has none."""
        if not self.cfg.pooled:
            return [page.vectors]
        try:
            return [page.vectors, *pool_by_rows_and_columns(page)]
        except ValueError as exc:
            return reason(EMBED, "NoPatchGrid", str(exc))
