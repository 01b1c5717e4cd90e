"""`colray demo`: ingest the shipped corpus into an embedded store and show a few searches.

Also builds text corpora from the Python standard library's docstrings, a real and varied
corpus every machine has (used by the demo data, the tests and the benchmarks).
"""

from __future__ import annotations

import ast
import importlib.resources
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from colray.config import Settings

DEMO_QUERIES = (
    "read and write zip archives",
    "parse command line options and arguments",
    "send an email message through an SMTP server",
    "compare two sequences and show their differences",
)


def store_is_ready(settings: Settings) -> bool:
    """The demo's store holds the whole corpus in the layout the demo writes: answer from it."""
    from colray.embed import REGISTRY
    from colray.layout import text_layout
    from colray.sink.edge import EdgeSink

    if not Path(str(settings.sink.path)).is_dir():
        return False
    rows = pq.ParquetFile(settings.source.path).metadata.num_rows
    store = EdgeSink(settings.sink, text_layout(settings.embed, REGISTRY[settings.embed.model].dim))
    try:
        if store.layout_problems(for_writing=True):
            return False
        store.open_for_reading()
        return store.count() == rows
    except Exception:  # half-written, locked, damaged: ingest it again
        return False
    finally:
        store.close()


def demo_corpus_path() -> Path:
    return Path(str(importlib.resources.files("colray") / "data" / "stdlib_modules.parquet"))


def stdlib_docstrings(
    *, modules_only: bool = False, public_only: bool = True, min_chars: int = 40
) -> Iterator[dict[str, str]]:
    """Docstrings of the standard library as rows {doc_id, title, text}, in a stable order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    yield from python_docstrings(
        root, modules_only=modules_only, public_only=public_only, min_chars=min_chars
    )


def _set_aside(relative: Path) -> bool:
    """Tests and private modules: their docstrings describe internals, not a library's use."""
    return relative.parts[0] in {"test", "tests", "idlelib", "site-packages", "lib2to3"} or any(
        part.startswith(("test", "_")) for part in relative.parts
    )


def python_docstrings(
    root: Path,
    *,
    modules_only: bool = False,
    public_only: bool = True,
    min_chars: int = 40,
    set_aside: bool = False,
) -> Iterator[dict[str, str]]:
    """Docstrings of the Python sources under `root` (parsed, never imported), as rows.

    Tests and private modules are set aside; `set_aside=True` gives only theirs instead (more
    real text for large corpora: ~83k rows from this project's environment, ~38k set aside).
    """
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if _set_aside(relative) != set_aside:
            continue
        module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        nodes: list[tuple[str, str, ast.AST]] = [(module, module, tree)]
        if not modules_only:
            # Names repeat inside a module (methods of different classes): the line keeps ids unique.
            nodes += [
                (f"{module}:{node.lineno}", f"{module}.{node.name}", node)
                for node in ast.walk(tree)
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and not (public_only and node.name.startswith("_"))
            ]
        for doc_id, title, node in nodes:
            doc = ast.get_docstring(node)  # type: ignore[arg-type]
            if doc and len(doc) >= min_chars:
                yield {"doc_id": doc_id, "title": title, "text": " ".join(doc.split())}


def write_corpus(
    rows: list[dict[str, str]], out: Path, *, rows_per_file: int | None = None
) -> Path:
    """Write rows as one Parquet file, or as a directory of files of `rows_per_file` rows."""
    if rows_per_file is None:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), out)
        return out
    out.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, len(rows), rows_per_file)):
        chunk = rows[start : start + rows_per_file]
        pq.write_table(pa.Table.from_pylist(chunk), out / f"part-{part:05d}.parquet")
    return out
