"""Queries: embed the query text with the model of the vector searched, and run the job's query
plan (`colray.layout`) against its sink. No Ray, nothing of the ingest driver.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from colray.config import ConfigError, Settings, SinkConfig
from colray.layout import (
    QueryPlan,
    VectorSpec,
    image_layout,
    image_query_plan,
    image_vector_names,
    muvera_vector_name,
    searched_model,
    text_layout,
    text_query_plan,
)
from colray.sink import (
    Hit,
    RetriesExhausted,
    SinkError,
    open_sink,
    refused_credentials,
    unreachable,
)


def search(
    settings: Settings, text: str, *, limit: int = 5, vector: str | None = None
) -> list[Hit]:
    """The `limit` best points for `text` by MaxSim on `vector` (default: the job's text vector,
    else its page vector), best first."""
    if not text.strip():
        raise ConfigError(["TEXT: the query is empty"])
    try:
        which = searched_model(settings, vector)
    except ValueError as exc:
        raise ConfigError([f"--vector: {exc}"]) from None
    encode, layout, plan = (
        _image_query(settings, limit) if which == "image" else _text_query(settings, limit)
    )
    _store_must_exist(settings.sink)
    try:
        sink = open_sink(settings.sink, layout)
    except Exception as exc:  # local mode's directory held by another process, ...
        raise unreachable(settings.sink, exc) from None
    try:
        sink.open_for_reading()
        hits = sink.query(encode(text), plan, limit=limit)
    except RetriesExhausted as exc:
        raise SinkError(f"cannot reach the server at {settings.sink.location()}: {exc}") from None
    except Exception as exc:
        if refused_credentials(exc):
            raise unreachable(settings.sink, exc) from None
        raise
    finally:
        sink.close()
    return [Hit(h.id, h.score, h.payload) for h in hits]


def _store_must_exist(cfg: SinkConfig) -> None:
    """A query never creates a store: opening a local-mode or Edge path that does not exist
    would make an empty one there."""
    if cfg.path is not None and not Path(cfg.path).exists():
        raise SinkError(f"no store at {cfg.path} (run `colray ingest` first, or fix sink.path)")


QueryEncoder = Callable[[str], dict[str, np.ndarray]]


def _text_query(settings: Settings, limit: int) -> tuple[QueryEncoder, list[VectorSpec], QueryPlan]:
    from colray.embed import load_embedder
    from colray.embed.muvera import muvera_for

    cfg = settings.embed
    try:
        embedder = load_embedder(cfg)
    except (ValueError, OSError) as exc:
        raise ConfigError([f"embed.model: {exc}"]) from None
    muvera = muvera_for(cfg, embedder.dim) if cfg.first_stage == "muvera" else None

    def encode(text: str) -> dict[str, np.ndarray]:
        tokens = embedder.embed_query(text)
        if muvera is None:
            return {cfg.vector_name: tokens}
        return {cfg.vector_name: tokens, muvera_vector_name(cfg): muvera.encode_query(tokens)}

    return encode, text_layout(cfg, embedder.dim), text_query_plan(cfg, limit)


def _image_query(
    settings: Settings, limit: int
) -> tuple[QueryEncoder, list[VectorSpec], QueryPlan]:
    from colray.embed.colpali import ColPaliFamilyEmbedder, describe_image_model

    image = settings.image
    if image.model is None:
        raise ConfigError(["image.model: required to search page vectors"])
    try:
        info = describe_image_model(image.model)
    except (ValueError, OSError) as exc:
        raise ConfigError([f"image.model: {exc}"]) from None
    embedder = ColPaliFamilyEmbedder(info, image)

    def encode(text: str) -> dict[str, np.ndarray]:
        tokens = embedder.embed_query(text)
        return {name: tokens for name in image_vector_names(image)}

    return encode, image_layout(image, info.dim), image_query_plan(image, limit)
