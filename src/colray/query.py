"""Queries: embed the query text with the model of the vector searched, and run the job's query
plan (`colray.layout`) against its sink. No Ray, nothing of the ingest driver.
"""

from __future__ import annotations

from typing import Any

from colray.config import ConfigError, Settings
from colray.layout import (
    QueryPlan,
    image_layout,
    image_query_plan,
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
    embedder, layout, plan = (
        _image_query(settings, limit) if which == "image" else _text_query(settings, limit)
    )
    sink = open_sink(settings.sink, layout)
    try:
        sink.open_for_reading()
        hits = sink.query(embedder.embed_query(text), plan, limit=limit)
    except SinkError as exc:
        raise ConfigError([f"sink: {exc}"]) from None
    finally:
        sink.close()
    return [Hit(h.id, h.score, h.payload) for h in hits]


def _text_query(settings: Settings, limit: int) -> tuple[Any, list[Any], QueryPlan]:
    from colray.embed import load_embedder

    try:
        embedder = load_embedder(settings.embed)
    except (ValueError, OSError) as exc:
        raise ConfigError([f"embed.model: {exc}"]) from None
    return (
        embedder,
        text_layout(settings.embed, embedder.dim),
        text_query_plan(settings.embed, limit),
    )


def _image_query(settings: Settings, limit: int) -> tuple[Any, list[Any], QueryPlan]:
    from colray.embed.colpali import ColPaliFamilyEmbedder, describe_image_model

    image = settings.image
    if image.model is None:
        raise ConfigError(["image.model: required to search page vectors"])
    try:
        info = describe_image_model(image.model)
    except (ValueError, OSError) as exc:
        raise ConfigError([f"image.model: {exc}"]) from None
    embedder = ColPaliFamilyEmbedder(info, image)
    return embedder, image_layout(image, info.dim), image_query_plan(image, limit)
