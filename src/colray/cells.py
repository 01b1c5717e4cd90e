"""A media cell as the row contract allows it (raw bytes, an HF-style {bytes, path} struct, or a
path/URI) read into bytes; shared by the image decode and the document split stages.
"""

from __future__ import annotations

from typing import Any


class CellRejected(ValueError):
    """A cell that cannot be read; the message says why."""


def cell_bytes(cell: Any, what: str = "image") -> bytes:
    if cell is None:
        raise CellRejected(f"{what} is null")
    if isinstance(cell, dict):  # the HF Image feature: {"bytes": ..., "path": ...}
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            return read_uri(cell["path"])
        raise CellRejected(f"{what} struct has neither bytes nor path")
    if isinstance(cell, bytes | bytearray | memoryview):
        if not cell:
            raise CellRejected(f"{what} bytes are empty")
        return bytes(cell)
    if isinstance(cell, str):
        if not cell.strip():
            raise CellRejected(f"{what} path is empty")
        return read_uri(cell)
    raise CellRejected(f"unsupported {what} cell of type {type(cell).__name__}")


def cell_path(cell: Any) -> str | None:
    """The local file a cell names without bytes, or None (then read it with cell_bytes)."""
    path = cell.get("path") if isinstance(cell, dict) and not cell.get("bytes") else cell
    if isinstance(path, str) and path.strip() and "://" not in path:
        return path
    return None


def read_uri(uri: str) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as handle:
            return handle.read()
    except Exception as exc:
        raise CellRejected(f"cannot read {uri!r}: {type(exc).__name__}: {exc}") from None
