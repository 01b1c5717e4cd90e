"""Queries: embed the query text with the model of the vector searched, and run the job's query
plan (`colray.layout`) against its sink. No Ray, nothing of the ingest driver.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from colray.config import ConfigError, Settings
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
from colray.sink import Hit, SinkError, open_sink


def search(
    settings: Settings, text: str, *, limit: int = 5, vector: str | None = None
) -> list[Hit]:
    """The `limit` best points for `text` by MaxSim on `vector` (default: the job's text vector,
    else its page vector), best first."""
    try:
        which = searched_model(settings, vector)
    except ValueError as exc:
        raise ConfigError([f"--vector: {exc}"]) from None
    encode, layout, plan = (
        _image_query(settings, limit) if which == "image" else _text_query(settings, limit)
    )
    sink = open_sink(settings.sink, layout)
    try:
        sink.open_for_reading()
        hits = sink.query(encode(text), plan, limit=limit)
    except SinkError as exc:
        raise ConfigError([f"sink: {exc}"]) from None
    finally:
        sink.close()
    return [Hit(h.id, h.score, h.payload) for h in hits]


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
