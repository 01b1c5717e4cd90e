"""Sources: Parquet files and Hugging Face datasets as a sharded Ray dataset with stable point ids.

Resolution (listing files, reading footers, checking columns) happens before Ray starts.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from colray.config import ConfigError, SourceConfig
from colray.rows import (
    ALREADY_DONE,
    DOCUMENT,
    ERROR,
    HASH,
    ID,
    KEY,
    LOCATION,
    READ,
    READ_SECONDS,
    UNCHANGED,
    point_id,
    reason,
    with_stage_seconds,
)

if TYPE_CHECKING:
    from ray.data import Dataset


@dataclass(frozen=True)
class Piece:
    """A run of row groups of one file: the unit of reading."""

    path: str
    relative: str
    file_format: str  # "parquet" or "arrow" (HF save_to_disk writes Arrow IPC streams)
    row_groups: tuple[int, ...] | None
    first_row: int
    num_rows: int
    size_bytes: int
    # Set when this file's text column holds non-strings: its rows become dead letters.
    bad_text_type: str | None = None


@dataclass
class ResolvedSource:
    """A source checked against the config: its files, identity and total row count."""

    config: SourceConfig
    name: str
    pieces: list[Piece]
    filesystem: pafs.FileSystem
    columns: list[str] = field(default_factory=list)
    # Files whose footer cannot be read: (relative path, why). The run dead-letters them
    # and goes on with the rest; their row count is unknown.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    schema: pa.Schema | None = None  # of the columns read, from the first readable file

    @property
    def num_rows(self) -> int:
        return sum(p.num_rows for p in self.pieces)


def resolve_source(cfg: SourceConfig) -> ResolvedSource:
    """List the source's files, read their footers and check the configured columns exist."""
    if cfg.format == "hf":
        filesystem, root, files, name = _resolve_hf(cfg)
    else:
        suffix = ".pdf" if cfg.format == "pdf" else ".parquet"
        filesystem, root, files = _resolve_files(cfg.path, suffix)
        name = cfg.path if "://" in cfg.path else str(Path(cfg.path).expanduser().resolve())
    if not files:
        kind = "PDF files" if cfg.format == "pdf" else "data files"
        raise ConfigError([f"source.path: no {kind} found at {cfg.path!r}{_format_hint(cfg)}"])
    if cfg.format == "pdf":
        return _resolve_pdf_files(cfg, filesystem, root, files, cfg.name or name)
    embedded = (cfg.text_column, cfg.image_column, cfg.document_column)
    wanted = [c for c in embedded if c] + cfg.payload_columns
    if cfg.id_column:
        wanted.append(cfg.id_column)
    wanted = list(dict.fromkeys(wanted))
    pieces: list[Piece] = []
    problems: list[str] = []
    unreadable: list[tuple[str, str]] = []
    non_text: list[str] = []
    first_schema: pa.Schema | None = None
    for path, file_format in files:
        relative = _relative(path, root)
        try:
            schema, file_pieces = _inspect(filesystem, path, relative, file_format)
        except (pa.ArrowException, OSError) as exc:
            unreadable.append((relative, f"{type(exc).__name__}: {exc}"))
            continue
        missing = [c for c in wanted if c not in schema.names]
        if missing:
            problems.append(
                f"source: column(s) {', '.join(map(repr, missing))} not in {relative} "
                f"(it has: {', '.join(schema.names)})"
            )
            continue
        type_problems = _column_type_problems(cfg, schema, relative)
        if cfg.text_column and not _is_text(text_type := schema.field(cfg.text_column).type):
            # One file of non-strings is bad rows (dead letters); every file is a wrong column.
            non_text.append(type_problems.pop(0))
            file_pieces = [replace(p, bad_text_type=str(text_type)) for p in file_pieces]
        elif first_schema is None and not type_problems:
            first_schema = pa.schema([schema.field(c) for c in wanted])
        problems.extend(type_problems)
        pieces.extend(file_pieces)
    if non_text and all(p.bad_text_type for p in pieces):
        problems.extend(non_text)
    if problems:
        raise ConfigError(
            problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        )
    if unreadable and len(unreadable) == len(files):
        raise ConfigError(
            [f"source: {rel} cannot be read as {fmt}: {why}" for (rel, why), (_, fmt)
             in zip(unreadable[:20], files, strict=False)]
        )  # fmt: skip
    return ResolvedSource(
        cfg, cfg.name or name, pieces, filesystem, wanted, unreadable, first_schema
    )


@dataclass(frozen=True)
class SkipRules:
    """Rows to pass over: ones an interrupted run finished, and ones already stored unchanged.

    `done` is an object ref of a set of point ids; `stored` of a dict point id -> content
    hash (incremental runs); `salt` names how rows are embedded, so a new model changes
    every hash.
    """

    salt: str = ""
    done: Any = None
    stored: Any = None

    def finished(self) -> set[str] | None:
        return _value(self.done)

    def stored_hashes(self) -> dict[str, str] | None:
        return _value(self.stored)


def _value(held: Any) -> Any:
    """A rule's value: from the object store on Ray, as it is in this process."""
    return ray.get(held) if isinstance(held, ray.ObjectRef) else held


def read_dataset(
    source: ResolvedSource, rules: SkipRules | None = None, *, parallelism: int = -1
) -> Dataset:
    """The source as a Ray dataset of Arrow blocks carrying point ids, keys, locations, hashes."""
    # Imported here: Ray Data (pandas under it) takes ~3 s to import, which a job that runs in
    # this process (run.executor) never needs.
    from colray.ray_source import ColraySource

    return ray.data.read_datasource(
        ColraySource(source, rules or SkipRules()),
        override_num_blocks=None if parallelism < 0 else parallelism,
    )


def read_pieces(
    source: ResolvedSource, pieces: list[Piece], rules: SkipRules
) -> Iterator[pa.Table]:
    finished, stored = rules.finished(), rules.stored_hashes()
    for piece in pieces:
        blocks = read_piece(source, piece, finished, stored, rules.salt)
        rows_done = 0
        while True:
            start = time.perf_counter()  # time spent reading, not waiting downstream
            try:
                block = next(blocks, None)
            except (pa.ArrowException, OSError) as exc:
                # A file damaged past its footer: its remaining rows become dead letters.
                why = f"{type(exc).__name__}: {exc}"
                block = unreadable_rows(source, piece, rows_done, why)
                if block.num_rows:
                    yield with_stage_seconds(block, READ_SECONDS, time.perf_counter() - start)
                break
            if block is None:
                break
            rows_done += block.num_rows
            yield with_stage_seconds(block, READ_SECONDS, time.perf_counter() - start)


def unreadable_rows(source: ResolvedSource, piece: Piece, rows_done: int, why: str) -> pa.Table:
    """The rows of a piece from `rows_done` on, as error rows keyed by their location."""
    locations = [
        f"{piece.relative}#{piece.first_row + i}" for i in range(rows_done, piece.num_rows)
    ]
    error = reason(READ, "UnreadableData", why)[:1000]
    assert source.schema is not None
    return pa.table(
        {
            **{f.name: pa.nulls(len(locations), f.type) for f in source.schema},
            ID: pa.array([None] * len(locations), pa.string()),
            KEY: pa.array(locations, pa.string()),
            LOCATION: pa.array(locations, pa.string()),
            ERROR: pa.array([error] * len(locations), pa.string()),
            HASH: pa.nulls(len(locations), pa.string()),
        }
    )


def content_hashes(table: pa.Table, salt: str) -> list[str]:
    """Per row, a digest of every column read plus the salt (how the rows are embedded)."""
    columns = [table.column(name).to_pylist() for name in table.column_names]
    hashes = []
    for row in zip(*columns, strict=True):
        digest = hashlib.blake2b(salt.encode(), digest_size=16)
        _feed(digest, list(row))
        hashes.append(digest.hexdigest())
    return hashes


def _feed(digest: Any, value: Any) -> None:
    """Hash a value unambiguously: each value is tagged with its type and length."""
    if isinstance(value, bytes):
        digest.update(b"b%d:" % len(value) + value)
    elif isinstance(value, str):
        _feed(digest, value.encode())
        digest.update(b"s")
    elif isinstance(value, dict):
        digest.update(b"d%d:" % len(value))
        for key in sorted(value):
            _feed(digest, str(key))
            _feed(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(b"l%d:" % len(value))
        for item in value:
            _feed(digest, item)
    else:  # None, numbers, dates: their repr is stable
        _feed(digest, repr(value))
        digest.update(b"r")


def read_piece(
    source: ResolvedSource,
    piece: Piece,
    finished: set[str] | None = None,
    stored: dict[str, str] | None = None,
    salt: str = "",
) -> Iterator[pa.Table]:
    """Blocks of at most `rows_per_block` rows of one piece, with colray's columns added."""
    cfg = source.config
    row = piece.first_row
    for batch in _iter_batches(source.filesystem, piece, source.columns, cfg.rows_per_block):
        table = pa.Table.from_batches([batch])
        hashes = content_hashes(table, salt)
        if piece.file_format == "pdf":  # one document: the file is its key and location
            locations = [piece.relative]
        else:
            locations = [f"{piece.relative}#{row + i}" for i in range(table.num_rows)]
        if cfg.id_column:
            keys = [None if v is None else str(v) for v in table.column(cfg.id_column).to_pylist()]
        else:
            keys = locations
        ids = [None if k is None else point_id(source.name, k) for k in keys]
        errors = [
            None
            if k is not None
            else reason(READ, "NullId", f"id column {cfg.id_column!r} is null")
            for k in keys
        ]
        if piece.bad_text_type is not None:
            assert cfg.text_column is not None
            why = reason(
                READ, "NonStringText", f"column {cfg.text_column!r} holds {piece.bad_text_type}"
            )
            errors = [error or why for error in errors]
            index = table.column_names.index(cfg.text_column)
            table = table.set_column(index, cfg.text_column, pa.nulls(table.num_rows, pa.string()))
        if finished:
            errors = [
                ALREADY_DONE.encode() if pid in finished else error
                for pid, error in zip(ids, errors, strict=True)
            ]
        if stored:
            errors = [
                UNCHANGED.encode()
                if error is None and pid is not None and stored.get(pid) == digest
                else error
                for pid, error, digest in zip(ids, errors, hashes, strict=True)
            ]
        table = (
            table.append_column(ID, pa.array(ids, pa.string()))
            .append_column(KEY, pa.array(keys, pa.string()))
            .append_column(LOCATION, pa.array(locations, pa.string()))
            .append_column(ERROR, pa.array(errors, pa.string()))
            .append_column(HASH, pa.array(hashes, pa.string()))
        )
        row += table.num_rows
        yield table


def _format_hint(cfg: SourceConfig) -> str:
    """What the folder holds instead, when that is a Hugging Face dataset or PDFs."""
    folder = Path(cfg.path).expanduser()
    if not folder.is_dir():
        return ""
    names = {p.name for p in folder.iterdir()}
    if cfg.format != "hf" and names & {"dataset_dict.json", "state.json", "dataset_info.json"}:
        return " (it is a Hugging Face save_to_disk folder: set source.format=hf)"
    if cfg.format != "pdf" and any(p.suffix.lower() == ".pdf" for p in folder.rglob("*.pdf")):
        return " (it holds PDF files: set source.format=pdf)"
    return ""


def _resolve_pdf_files(
    cfg: SourceConfig, filesystem: pafs.FileSystem, root: str, files: list[tuple[str, str]],
    name: str,
) -> ResolvedSource:  # fmt: skip
    """PDF files, one document row each; their pages are counted when they are split."""
    pieces = []
    for index, (path, _) in enumerate(files):
        size = filesystem.get_file_info(path).size or 0
        pieces.append(Piece(path, _relative(path, root), "pdf", None, index, 1, size))
    schema = pa.schema([(DOCUMENT, DOCUMENT_CELL)])
    return ResolvedSource(cfg, name, pieces, filesystem, [], [], schema)


# A document cell as the reader gives it: a local file's path, or (remote files) its bytes.
DOCUMENT_CELL = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _pdf_batch(filesystem: pafs.FileSystem, piece: Piece) -> pa.RecordBatch:
    if isinstance(filesystem, pafs.LocalFileSystem):
        cell = {"bytes": None, "path": piece.path}
    else:
        with filesystem.open_input_file(piece.path) as handle:
            cell = {"bytes": handle.read(), "path": piece.relative}
    return pa.RecordBatch.from_arrays([pa.array([cell], DOCUMENT_CELL)], [DOCUMENT])


def _iter_batches(
    filesystem: pafs.FileSystem, piece: Piece, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    if piece.file_format == "pdf":
        yield _pdf_batch(filesystem, piece)
        return
    if piece.file_format == "parquet":
        with filesystem.open_input_file(piece.path) as handle:
            parquet = pq.ParquetFile(handle)
            yield from parquet.iter_batches(
                batch_size=batch_rows, row_groups=list(piece.row_groups or ()), columns=columns
            )
        return
    with filesystem.open_input_file(piece.path) as handle:
        table = pa.ipc.open_stream(handle).read_all().select(columns)
    yield from table.to_batches(max_chunksize=batch_rows)


def _inspect(
    filesystem: pafs.FileSystem, path: str, relative: str, file_format: str
) -> tuple[pa.Schema, list[Piece]]:
    if file_format == "arrow":
        with filesystem.open_input_file(path) as handle:
            table = pa.ipc.open_stream(handle).read_all()
        return table.schema, [Piece(path, relative, "arrow", None, 0, table.num_rows, table.nbytes)]
    with filesystem.open_input_file(path) as handle:
        meta = pq.ParquetFile(handle).metadata
        schema = meta.schema.to_arrow_schema()
    pieces, first, group, rows, size = [], 0, [], 0, 0
    # Cut big files into pieces of ~64 MiB of row groups so one file still spreads over workers.
    for index in range(meta.num_row_groups):
        rg = meta.row_group(index)
        group.append(index)
        rows += rg.num_rows
        size += rg.total_byte_size
        if size >= 64 << 20 or index == meta.num_row_groups - 1:
            pieces.append(Piece(path, relative, "parquet", tuple(group), first, rows, size))
            first, group, rows, size = first + rows, [], 0, 0
    return schema, pieces


def _is_text(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):  # pandas categoricals arrive dictionary-encoded
        return _is_text(dtype.value_type)
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype)


def _is_image(dtype: pa.DataType) -> bool:
    """The HF Image feature (a struct with bytes and/or path), raw bytes, or a path/URI."""
    if pa.types.is_struct(dtype):
        return {"bytes", "path"} & {dtype.field(i).name for i in range(dtype.num_fields)} != set()
    return _is_text(dtype) or pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype)


def _column_type_problems(cfg: SourceConfig, schema: pa.Schema, relative: str) -> list[str]:
    problems = []
    if cfg.text_column and not _is_text(dtype := schema.field(cfg.text_column).type):
        problems.append(
            f"source.text_column: {cfg.text_column!r} in {relative} has type {dtype}, "
            "expected a string column"
        )
    if cfg.image_column and not _is_image(dtype := schema.field(cfg.image_column).type):
        problems.append(
            f"source.image_column: {cfg.image_column!r} in {relative} has type {dtype}, "
            "expected an image struct {bytes, path}, binary, or a string path"
        )
    if cfg.document_column and not _is_image(dtype := schema.field(cfg.document_column).type):
        problems.append(
            f"source.document_column: {cfg.document_column!r} in {relative} has type {dtype}, "
            "expected PDF bytes, a {bytes, path} struct, or a string path"
        )
    return problems


def _filesystem_for(path: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in path or path.startswith("file://"):
        local = path.removeprefix("file://")
        return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, stripped = fsspec.core.url_to_fs(path)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), stripped


def _resolve_files(path: str, suffix: str) -> tuple[pafs.FileSystem, str, list[tuple[str, str]]]:
    """A file, a directory (read recursively, files ending in `suffix`) or a glob."""
    file_format = suffix.lstrip(".")
    filesystem, stripped = _filesystem_for(path)
    if any(ch in stripped for ch in "*?["):
        root = stripped.split("*")[0].rsplit("/", 1)[0]
        if isinstance(filesystem, pafs.LocalFileSystem):
            matches = sorted(globlib.glob(stripped, recursive=True))
        else:
            import fsspec

            fs, _ = fsspec.core.url_to_fs(path)
            matches = sorted(fs.glob(stripped))
        return filesystem, root, [(m, file_format) for m in matches if not m.endswith("/")]
    info = filesystem.get_file_info(stripped)
    if info.type == pafs.FileType.NotFound:
        raise ConfigError([f"source.path: {path!r} does not exist"])
    if info.type == pafs.FileType.File:
        return filesystem, stripped.rsplit("/", 1)[0], [(stripped, file_format)]
    listing = filesystem.get_file_info(pafs.FileSelector(stripped, recursive=True))
    files = sorted(
        i.path for i in listing if i.type == pafs.FileType.File and i.path.lower().endswith(suffix)
    )
    return filesystem, stripped, [(f, file_format) for f in files]


def _resolve_hf(cfg: SourceConfig) -> tuple[pafs.FileSystem, str, list[tuple[str, str]], str]:
    local = Path(cfg.path).expanduser()
    if not local.is_dir():
        return _resolve_hub(cfg)
    root = local.resolve()
    if (root / "dataset_dict.json").is_file():
        splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
        _check_split(cfg, splits)
        root = root / cfg.split
    if (root / "state.json").is_file():
        state = json.loads((root / "state.json").read_text())
        files = [(str(root / f["filename"]), "arrow") for f in state["_data_files"]]
        return pafs.LocalFileSystem(), str(root), files, str(root)
    parquet = sorted(str(p) for p in root.rglob("*.parquet"))
    splits = sorted({split for p in parquet if (split := _split_of(Path(p), root))})
    if splits:  # an export names its splits: read the configured one, and only it
        _check_split(cfg, splits)
        parquet = [p for p in parquet if _split_of(Path(p), root) == cfg.split]
    return pafs.LocalFileSystem(), str(root), [(p, "parquet") for p in parquet], str(root)


def _split_of(path: Path, root: Path) -> str | None:
    """The split a parquet export's file belongs to: `<split>-00000-of-00001.parquet`, or a
    folder named after a split (`data/train/...`); None when neither says."""
    match = re.fullmatch(r"(\w+?)-\d{5}-of-\d{5}\.parquet", path.name)
    if match:
        return match.group(1)
    folders = path.relative_to(root).parts[:-1]
    known = {"train", "test", "validation", "valid", "dev", "eval"}
    return next((part for part in reversed(folders) if part in known), None)


def _check_split(cfg: SourceConfig, splits: list[str]) -> None:
    if cfg.split not in splits:
        raise ConfigError(
            [f"source.split: {cfg.split!r} is not a split of {cfg.path!r} (it has: "
             f"{', '.join(sorted(splits)) or 'none'})"]
        )  # fmt: skip


def _resolve_hub(cfg: SourceConfig) -> tuple[pafs.FileSystem, str, list[tuple[str, str]], str]:
    """A Hub dataset id, read through the parquet conversion the Hub keeps for every dataset."""
    try:
        from huggingface_hub import HfFileSystem

        hub = HfFileSystem()
        root = f"datasets/{cfg.path}@~parquet/{cfg.hf_config}/{cfg.split}"
        files = sorted(hub.glob(f"{root}/*.parquet"))
        if not files:  # a split (or config) the dataset does not have: say which it has
            config_root = root.rsplit("/", 1)[0]
            splits = [entry.rsplit("/", 1)[-1] for entry in hub.ls(config_root, detail=False)]
            _check_split(cfg, splits)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            [
                f"source.path: {cfg.path!r} is not a local directory and the Hugging Face Hub could not list it ({type(exc).__name__})"
            ]
        ) from None
    return (
        pafs.PyFileSystem(pafs.FSSpecHandler(hub)),
        root,
        [(f, "parquet") for f in files],
        f"hf://{cfg.path}/{cfg.hf_config}/{cfg.split}",
    )


def _relative(path: str, root: str) -> str:
    root = root.rstrip("/")
    return path[len(root) + 1 :] if path.startswith(root + "/") else path.rsplit("/", 1)[-1]
