"""The row contract: the columns colray adds to a row, why a row stops, and the dead-letter schema.

Every stage (read, decode, embed, points) imports its names from here, never from another stage.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Fixed forever: changing it would change every point id colray has ever written.
POINT_ID_NAMESPACE = uuid.UUID("7d5c8c1e-2f5a-5b8e-9a51-6c0a4f3e2b17")

# Columns the reader adds to every row; the user's columns keep their own names.
ID = "_colray_id"
KEY = "_colray_key"
LOCATION = "_colray_location"
# Why the row will not become a point (a `Reason`, encoded); null while it still may.
ERROR = "_colray_error"
# A digest of the row's content and how it is embedded: an incremental run skips rows whose
# stored point carries the same digest.
HASH = "_colray_hash"

# Seconds each stage spent on a row (its block's time shared evenly), so stage timings
# travel with the data instead of through a separate actor.
READ_SECONDS = "_colray_read_s"
SPLIT_SECONDS = "_colray_split_s"  # documents into pages
RENDER_SECONDS = "_colray_render_s"  # pages to pixels
DECODE_SECONDS = "_colray_decode_s"
EMBED_SECONDS = "_colray_embed_s"  # the whole embedding stage, its first-stage encoding too
FIRST_STAGE_SECONDS = "_colray_first_stage_s"  # of which: the MUVERA encodings
STAGE_SECONDS = {"read": READ_SECONDS, "split": SPLIT_SECONDS, "render": RENDER_SECONDS,
                 "decode": DECODE_SECONDS, "embed": EMBED_SECONDS,
                 "first_stage": FIRST_STAGE_SECONDS}  # fmt: skip

# Set by the text embedder: the text was longer than the model reads (kept, and flagged).
TRUNCATED = "_colray_truncated"

# Decoded page images, from the decode stage to the image embedder.
PIXELS = "_colray_pixels"  # uint8 RGB, row-major (height, width, 3)
WIDTH = "_colray_width"
HEIGHT = "_colray_height"


# Documents: the reader's rows are documents (DOCUMENT: a PDF path/URI for format=pdf); the
# split stage turns each into page rows, one point each, which the render stage renders.
DOCUMENT = "_colray_document"
DOCUMENT_KEY = "_colray_document_key"
DOCUMENT_START = "_colray_document_start"  # the first row of its document (counts documents)
PAGE_NUMBER = "_colray_page"  # 1-based
PAGE_COUNT = "_colray_page_count"  # the document's pages (0: it could not be opened)
PAGE_SOURCE = "_colray_page_source"  # a local PDF file the page is read from ...
PAGE_PDF = "_colray_page_pdf"  # ... or the page alone, as a one-page PDF
PAGE_INDEX = "_colray_page_index"  # 0-based, in PAGE_SOURCE or PAGE_PDF
PAGE_TEXT = "_colray_page_text"  # the page's text layer
NO_TEXT = "_colray_no_text"  # optional text was empty: the point has no text vector
RENDER = "render"  # the stage name of documents' and pages' failures


def page_key(document_key: str, page: int) -> str:
    """A page's row key: its point id is uuid5 of the source and this."""
    return f"{document_key}#page={page}"


def point_id(source_name: str, row_key: str) -> str:
    """uuid5 of the source's identity and the row's key: the same row always lands on one point."""
    return str(uuid.uuid5(POINT_ID_NAMESPACE, f"{source_name}\n{row_key}"))


def vectors_column(name: str) -> str:
    """Column carrying a named vector's float32 bytes, row-major (n_vectors, dim)."""
    return f"_colray_vectors:{name}"


def count_column(name: str) -> str:
    """Column carrying how many vectors (rows of the matrix) a named vector has."""
    return f"_colray_num_vectors:{name}"


# --- why a row stops ---------------------------------------------------------------------

READ = "read"
DECODE = "decode"
EMBED = "embed"  # RENDER ("render"), for documents, is with their columns above
WRITE = "write"
SKIP = "skip"  # not a failure: the row needs no work in this run


@dataclass(frozen=True)
class Reason:
    """Why a row does not become a point in this run: a dead letter's stage, class and
    message, or (stage `skip`) why it needs no work. Travels encoded in the ERROR column."""

    stage: str
    error_class: str
    message: str

    def encode(self) -> str:
        return f"{self.stage}: {self.error_class}: {self.message}"

    @classmethod
    def decode(cls, text: str) -> Reason:
        stage, _, rest = text.partition(": ")
        error_class, _, message = rest.partition(": ")
        return cls(stage, error_class, message)

    @property
    def is_skip(self) -> bool:
        return self.stage == SKIP

    def __str__(self) -> str:
        return self.encode()


def reason(stage: str, error_class: str, message: str) -> str:
    """A row's reason as it travels in the ERROR column."""
    return Reason(stage, error_class, message).encode()


# A write whose transient failures outlasted the retries: a dead letter of this run only.
RETRIES_EXHAUSTED = "RetriesExhausted"

# The two kinds of skip: rows an interrupted run of the same job finished, and rows stored
# with the same content hash (incremental runs).
ALREADY_DONE = Reason(SKIP, "AlreadyDone", "finished by an interrupted run of this job")
UNCHANGED = Reason(SKIP, "Unchanged", "the stored point has this content hash")


def short(exc: BaseException, limit: int = 500) -> str:
    """An exception's message on one line, cut to `limit` characters."""
    text = str(exc).replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


# --- dead letters ------------------------------------------------------------------------

DEAD_LETTER_SCHEMA = pa.schema(
    [
        ("point_id", pa.string()),
        ("row_key", pa.string()),
        ("source_location", pa.string()),
        ("stage", pa.string()),
        ("error_class", pa.string()),
        ("error", pa.string()),
    ]
)

DeadLetter = dict[str, str | None]


def dead_letter(
    point: str | None, key: str | None, location: str | None, why: Reason | str
) -> DeadLetter:
    """One dead-letter row: the row's identity and why it failed."""
    parsed = why if isinstance(why, Reason) else Reason.decode(why)
    return {
        "point_id": point,
        "row_key": key,
        "source_location": location,
        "stage": parsed.stage,
        "error_class": parsed.error_class,
        "error": parsed.message,
    }


def dead_letter_key(entry: DeadLetter) -> str:
    """How a dead letter is counted in the report: `stage: ErrorClass`."""
    return f"{entry['stage']}: {entry['error_class']}"


def retryable(entry: DeadLetter) -> bool:
    """A dead letter that running the job again may turn into a point: its write ran out of
    retries on transient failures, nothing is wrong with the row itself."""
    return entry["stage"] == WRITE and entry["error_class"] == RETRIES_EXHAUSTED


# --- table helpers -----------------------------------------------------------------------


def with_stage_seconds(table: pa.Table, column: str, seconds: float) -> pa.Table:
    """A stage's time on this block, shared evenly over its rows, added to what an earlier
    pass of the same stage spent on them."""
    share = seconds / table.num_rows if table.num_rows else 0.0
    if column in table.column_names:
        index = table.column_names.index(column)
        return table.set_column(index, column, pc.add(table.column(column), share))
    return table.append_column(column, pa.array([share] * table.num_rows, pa.float64()))


def binary_array(values: list[bytes | None]) -> pa.Array:
    """Large byte strings (pages' pixels, multivectors) as one Arrow binary array, copied once.

    `pa.array` appends them through a growing builder, which in a fresh Ray worker cost about
    4 ms a page (4% of the decode workers' profile samples, beside PIL's 64%); one
    `bytes.join` into a buffer that Arrow wraps without a copy does not.
    """
    sizes = [None if v is None else len(v) for v in values]
    if sum(s or 0 for s in sizes) >= 2**31:  # past int32 offsets: the builder splits it
        return pa.array(values, pa.binary())
    return binary_column(b"".join(v for v in values if v is not None), sizes)


def binary_column(data: Any, sizes: list[int | None], valid: list[bool] | None = None) -> pa.Array:
    """An Arrow binary array over `data` (any buffer, wrapped without a copy), which holds the
    values end to end in order; a None size is a missing value, taking no bytes, and a False
    in `valid` one whose bytes are there but unused."""
    lengths = np.array([s or 0 for s in sizes], np.int64)
    offsets = np.zeros(len(sizes) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    present = np.array(valid if valid is not None else [s is not None for s in sizes], np.bool_)
    missing = len(sizes) - int(present.sum())
    validity = pa.py_buffer(np.packbits(present, bitorder="little")) if missing else None
    return pa.Array.from_buffers(pa.binary(), len(sizes), [validity, pa.py_buffer(offsets),
                                 pa.py_buffer(data)], null_count=missing)  # fmt: skip


def with_vectors(
    table: pa.Table, name: str, vectors: list[bytes | None], counts: list[int]
) -> pa.Table:
    """The table with a named vector's bytes and counts columns appended."""
    return table.append_column(vectors_column(name), binary_array(vectors)).append_column(
        count_column(name), pa.array(counts, pa.int32())
    )


def with_errors(table: pa.Table, errors: list[str | None]) -> pa.Table:
    """The table with its ERROR column replaced (moved to the end)."""
    return table.drop_columns([ERROR]).append_column(ERROR, pa.array(errors, pa.string()))


def column_list(table: pa.Table, name: str, default: Any = None) -> list[Any]:
    """A column as a Python list, or `default` for each row when the table lacks it."""
    if name in table.column_names:
        return table.column(name).to_pylist()
    return [default] * table.num_rows
