"""What every model family shares: the embedder interface and how a named model is described.

Each family's module keeps its own registry entries beside its classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np


class DocumentVectors(NamedTuple):
    """One document's (n_vectors, dim) float32 vectors, and whether its text was cut."""

    vectors: np.ndarray
    truncated: bool


@runtime_checkable
class Embedder(Protocol):
    """What the embedding stage and the query path need from a text model family."""

    dim: int

    def embed_documents(self, batch: list[str]) -> list[np.ndarray]:
        """One L2-normalised (n_vectors, dim) float32 array per input, in input order."""
        ...

    def encode_documents(self, batch: list[str]) -> list[DocumentVectors]:
        """The same vectors, each with whether the text was longer than the model reads."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """The query's (n_vectors, dim) float32 multivector."""
        ...


@dataclass(frozen=True)
class ModelSpec:
    """A model colray knows by name: what it is and where its weights come from."""

    name: str
    kind: Literal["text", "image"]
    profile: Literal["token", "colbert"] | None
    dim: int
    source: str
    hub_id: str | None = None
    onnx_file: str | None = None
