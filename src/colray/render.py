"""PDF documents to pages: the split stage (each document to its page rows, one point each) and
the render stage (each page to the model's pixels, with its text layer), CPU tasks both.

pypdfium2 (PDFium) is not thread-safe, even across documents; Ray's task workers are processes
that run one task at a time, so each holds one document at a time.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from colray.cells import CellRejected, cell_bytes, cell_path
from colray.embed.colpali import ImageGeometry
from colray.rows import (
    ALREADY_DONE,
    DOCUMENT_KEY,
    DOCUMENT_START,
    ERROR,
    HASH,
    HEIGHT,
    ID,
    KEY,
    LOCATION,
    PAGE_COUNT,
    PAGE_INDEX,
    PAGE_NUMBER,
    PAGE_PDF,
    PAGE_SOURCE,
    PAGE_TEXT,
    PIXELS,
    RENDER,
    RENDER_SECONDS,
    SPLIT_SECONDS,
    UNCHANGED,
    WIDTH,
    binary_column,
    page_key,
    point_id,
    reason,
    with_errors,
    with_stage_seconds,
)

PAGES_PER_BLOCK = 32  # page rows per output block of the split stage
POINTS_PER_INCH = 72
DPI_WITHOUT_BUDGET = 150  # for models that say nothing of their input size
PDF_MAGIC = b"%PDF-"

# The split stage's page rows: colray's columns, then the document row's payload columns.
PAGE_COLUMNS = {
    ID: pa.string(), KEY: pa.string(), LOCATION: pa.string(), ERROR: pa.string(),
    HASH: pa.string(), DOCUMENT_KEY: pa.string(), DOCUMENT_START: pa.bool_(),
    PAGE_NUMBER: pa.int32(), PAGE_COUNT: pa.int32(), PAGE_SOURCE: pa.string(),
    PAGE_PDF: pa.binary(), PAGE_INDEX: pa.int32(),
}  # fmt: skip


class DocumentRejected(Exception):
    """A document (or page) that will not be rendered: its error class and why."""

    def __init__(self, error_class: str, message: str):
        super().__init__(message)
        self.error_class = error_class

    def reason(self) -> str:
        return reason(RENDER, self.error_class, str(self))


def open_pdf(data: bytes | str) -> Any:
    """A pypdfium2 document from bytes or a local path; DocumentRejected says why not."""
    import pypdfium2 as pdfium

    head = data[:1024] if isinstance(data, bytes) else _head(data)
    if PDF_MAGIC not in head:
        raise DocumentRejected("NotAPdf", "the document does not start like a PDF")
    # PDFium keeps its last error across loads, and a document with an empty page tree fails
    # to load without setting one: a failed file load first leaves FPDF_ERR_FILE, which no
    # load of these bytes (or of a file just read) can set, so seeing it means "no pages".
    pdfium.raw.FPDF_LoadDocument(b"/nonexistent/colray-resets-the-last-error.pdf", None)
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        code = getattr(exc, "err_code", None)
        if code in (pdfium.raw.FPDF_ERR_PASSWORD, pdfium.raw.FPDF_ERR_SECURITY):
            raise DocumentRejected(
                "Encrypted", "the PDF is encrypted or password-protected"
            ) from None
        if code in (pdfium.raw.FPDF_ERR_FILE, pdfium.raw.FPDF_ERR_SUCCESS):
            raise DocumentRejected("NoPages", "the PDF has no pages") from None
        raise DocumentRejected("DamagedPdf", f"PDFium cannot read it: {exc}") from None


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(1024)
    except OSError as exc:
        raise DocumentRejected("Unreadable", f"cannot read {path!r}: {exc}") from None


def split_documents(
    table: pa.Table, *, document_column: str, source_name: str, rules: Any,
    payload_columns: list[str],
) -> Iterator[pa.Table]:  # fmt: skip
    """Ray Data batch function: each document row to blocks of its page rows. A document that
    cannot be opened becomes one row with its reason; finished or unchanged pages are skips."""
    finished, stored = rules.finished(), rules.stored_hashes()
    rows = table.to_pylist()
    for row in rows:
        start = time.perf_counter()
        payload = {c: row.get(c) for c in payload_columns}
        if row[ERROR] is not None:  # a row the reader already failed (no id, unreadable)
            yield _page_table([_failed_document(row, row[ERROR])], payload_columns, start)
            continue
        try:
            data, local = _document(row[document_column])
            document = open_pdf(local or data)
        except DocumentRejected as exc:
            yield _page_table([_failed_document(row, exc.reason())], payload_columns, start)
            continue
        try:
            pages = len(document)
            if pages == 0:
                failed = _failed_document(row, reason(RENDER, "NoPages", "the PDF has no pages"))
                yield _page_table([failed], payload_columns, start)
                continue
            digest = hashlib.blake2b(rules.salt.encode() + data, digest_size=16).hexdigest()
            for first in range(0, pages, PAGES_PER_BLOCK):
                start = time.perf_counter() if first else start
                chunk = [
                    _page_row(row, document, local, index, pages, digest, source_name,
                              finished, stored) | payload
                    for index in range(first, min(first + PAGES_PER_BLOCK, pages))
                ]  # fmt: skip
                yield _page_table(chunk, payload_columns, start)
        finally:
            document.close()


def _document(cell: Any) -> tuple[bytes, str | None]:
    """The document's bytes (its content hash is of them), and its local path if it has one."""
    try:
        local = cell_path(cell)
        if local is not None:
            with open(local, "rb") as handle:
                return handle.read(), local
        return cell_bytes(cell, "document"), None
    except (CellRejected, OSError) as exc:
        raise DocumentRejected("Unreadable", str(exc)) from None


def _failed_document(row: dict[str, Any], why: str) -> dict[str, Any]:
    return {ID: row[ID], KEY: row[KEY], LOCATION: row[LOCATION], ERROR: why,
            DOCUMENT_KEY: row[KEY], DOCUMENT_START: True, PAGE_COUNT: 0}  # fmt: skip


def _page_row(
    row: dict[str, Any], document: Any, local: str | None, index: int, pages: int, digest: str,
    source_name: str, finished: set[str] | None, stored: dict[str, str] | None,
) -> dict[str, Any]:  # fmt: skip
    key = page_key(row[KEY], index + 1)
    pid = point_id(source_name, key)
    page_hash = hashlib.blake2b(f"{digest}:{index}".encode(), digest_size=16).hexdigest()
    error = None
    if finished and pid in finished:
        error = ALREADY_DONE.encode()
    elif stored and stored.get(pid) == page_hash:
        error = UNCHANGED.encode()
    page: dict[str, Any] = {
        ID: pid, KEY: key, LOCATION: page_key(row[LOCATION], index + 1), ERROR: error,
        HASH: page_hash, DOCUMENT_KEY: row[KEY], DOCUMENT_START: index == 0,
        PAGE_NUMBER: index + 1, PAGE_COUNT: pages, PAGE_INDEX: index,
    }  # fmt: skip
    if error is not None:
        return page
    if local is not None:  # rendered from the file: only its path travels
        page[PAGE_SOURCE] = local
    else:  # from bytes: the page alone, as a one-page PDF, so pages spread over tasks
        page[PAGE_PDF], page[PAGE_INDEX] = _single_page(document, index), 0
    return page


def _single_page(document: Any, index: int) -> bytes:
    import pypdfium2 as pdfium

    alone = pdfium.PdfDocument.new()
    try:
        alone.import_pages(document, [index])
        buffer = io.BytesIO()
        alone.save(buffer)
        return buffer.getvalue()
    finally:
        alone.close()


def _page_table(rows: list[dict[str, Any]], payload_columns: list[str], start: float) -> pa.Table:
    columns = {
        name: pa.array([r.get(name) for r in rows], kind) for name, kind in PAGE_COLUMNS.items()
    }
    for name in payload_columns:
        columns[name] = pa.array([r.get(name) for r in rows])
    table = pa.table(columns)
    return with_stage_seconds(table, SPLIT_SECONDS, time.perf_counter() - start)


def render_scale(geometry: ImageGeometry, width: float, height: float, dpi: float | None) -> float:
    """Pixels per point: straight to the model's budget, never above `dpi` when it is set.

    Qwen-style models take up to max_pixels (the page keeps its shape); fixed-size ones are
    rendered just large enough to cover their size; others at 150 DPI. The page is then drawn
    on the grid the model would resize a render at this scale to (`_grid`).
    """
    if geometry.mode == "qwen":
        scale = math.sqrt(geometry.max_pixels / (width * height))
    elif geometry.mode == "fixed":
        scale = max(geometry.width / width, geometry.height / height)
    elif geometry.mode == "longest_edge":
        scale = geometry.longest_edge / max(width, height)
    else:
        scale = (dpi or DPI_WITHOUT_BUDGET) / POINTS_PER_INCH
    return min(scale, dpi / POINTS_PER_INCH) if dpi else scale


def render_pages(
    table: pa.Table, *, geometry: ImageGeometry, max_pixels: int, render_dpi: float | None,
    with_text: bool,
) -> pa.Table:  # fmt: skip
    """Ray Data batch function: the page rows' pixels (PIXELS, WIDTH, HEIGHT, as the decode
    stage gives them) and text layer (PAGE_TEXT); a page that cannot be rendered keeps its
    reason. The page references (PAGE_PDF, PAGE_SOURCE) are dropped."""
    start = time.perf_counter()
    errors = table.column(ERROR).to_pylist()
    sources = table.column(PAGE_SOURCE).to_pylist()
    singles = table.column(PAGE_PDF).to_pylist()
    indexes = table.column(PAGE_INDEX).to_pylist()
    grids: list[tuple[int, int] | None] = [None] * len(errors)
    texts: list[str | None] = [None] * len(errors)
    opened: dict[str, Any] = {}  # one open per file per batch: pages of a file come together
    pages: dict[int, Any] = {}
    try:
        for i, error in enumerate(errors):
            if error is not None:
                continue
            try:
                pages[i] = _open_page_source(sources[i], singles[i], opened)[indexes[i]]
                grids[i] = _grid(pages[i], geometry, max_pixels, render_dpi)
                texts[i] = _text(pages[i]) if with_text else None
            except DocumentRejected as exc:
                errors[i] = exc.reason()
            except Exception as exc:  # PDFium failing on one damaged page: that page only
                errors[i] = reason(RENDER, "RenderFailed", f"{type(exc).__name__}: {exc}")
            if errors[i] is not None:
                grids[i] = None
        pixels = _draw_pages(pages, grids, errors)
    finally:
        for page in pages.values():
            page.close()
        for document in opened.values():
            document.close()
    out = with_errors(table.drop_columns([PAGE_SOURCE, PAGE_PDF]), errors)
    out = (
        out.append_column(PIXELS, pixels)
        .append_column(WIDTH, pa.array([g[0] if g else 0 for g in grids], pa.int32()))
        .append_column(HEIGHT, pa.array([g[1] if g else 0 for g in grids], pa.int32()))
        .append_column(PAGE_TEXT, pa.array(texts, pa.string()))
    )
    return with_stage_seconds(out, RENDER_SECONDS, time.perf_counter() - start)


def _draw_pages(
    pages: dict[int, Any], grids: list[tuple[int, int] | None], errors: list[str | None]
) -> pa.Array:
    """Every page drawn by PDFium into its slice of one white buffer that becomes the pixel
    column as it is: no copy per page (two 1.8 MB copies a page were most of the stage once
    PDFium drew straight at the grid). A page PDFium fails on gets its reason, that page only."""
    sizes = [None if g is None else g[0] * g[1] * 3 for g in grids]
    valid = [s is not None for s in sizes]
    data = np.full(sum(s or 0 for s in sizes), 255, np.uint8)
    offset = 0
    for i, size in enumerate(sizes):
        if size is None:
            continue
        grid = grids[i]
        assert grid is not None
        try:
            draw_page(pages[i], *grid, into=memoryview(data)[offset : offset + size])
        except Exception as exc:
            errors[i] = reason(RENDER, "RenderFailed", f"{type(exc).__name__}: {exc}")
            valid[i], grids[i] = False, None
        offset += size
    return binary_column(data, sizes, valid)


def _open_page_source(path: str | None, single: bytes | None, opened: dict[str, Any]) -> Any:
    if single is not None:
        key = f"single:{id(single)}"
        opened[key] = open_pdf(single)
        return opened[key]
    assert path is not None
    if path not in opened:
        opened[path] = open_pdf(path)
    return opened[path]


def _grid(
    page: Any, geometry: ImageGeometry, max_pixels: int, dpi: float | None
) -> tuple[int, int]:
    """The width and height in pixels the page is drawn at: the model's grid for a render at
    `render_scale` (as if rendered, then resized to it), or DocumentRejected."""
    width, height = page.get_size()
    if width <= 0 or height <= 0:
        raise DocumentRejected("BadPage", f"the page measures {width} x {height} points")
    scale = render_scale(geometry, width, height, dpi)
    size = (round(width * scale), round(height * scale))
    if size[0] * size[1] > max_pixels:
        raise DocumentRejected(
            "PageTooLarge",
            f"at the model's scale the page is {size[0]}x{size[1]} = {size[0] * size[1]} "
            f"pixels, more than image.max_pixels ({max_pixels})",
        )
    try:  # pypdfium2's render at a scale rounds the size up
        return geometry.target_size(math.ceil(width * scale), math.ceil(height * scale))
    except ValueError as exc:  # e.g. a page too long and thin for the model's resizing
        raise DocumentRejected("BadPage", str(exc)) from None


def draw_page(page: Any, width: int, height: int, into: Any) -> None:
    """The page drawn by PDFium straight onto a width x height grid as packed RGB, into the
    writable buffer `into` (width * height * 3 bytes, white already: the paper).

    Rendering at the scale and then resizing to the model's grid with PIL, as pypdfium2's
    `render` would have us do, spent ~75% of the render stage in the resize (py-spy); PDFium
    draws vectors and text at any size directly, so the page is drawn once, at the grid.
    """
    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c

    # BGR with PDFium's reversed byte order is RGB; stride = width * 3: no padding.
    buffer = (ctypes.c_ubyte * (width * height * 3)).from_buffer(into)
    bitmap = pdfium.PdfBitmap.new_native(width, height, pdfium_c.FPDFBitmap_BGR,
                                         rev_byteorder=True, buffer=buffer, stride=width * 3)  # fmt: skip
    try:
        flags = pdfium_c.FPDF_ANNOT | pdfium_c.FPDF_REVERSE_BYTE_ORDER
        pdfium_c.FPDF_RenderPageBitmap(bitmap, page, 0, 0, width, height, 0, flags)
    finally:
        bitmap.close()
        del buffer  # releases its export of `into`


def _text(page: Any) -> str | None:
    """The page's text layer; None when it has none (a scan), so it gets no text vector."""
    textpage = page.get_textpage()
    try:
        text = " ".join(textpage.get_text_bounded().split())
    finally:
        textpage.close()
    return text or None
