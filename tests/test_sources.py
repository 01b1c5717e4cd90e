"""Sources: Parquet and Hugging Face layouts resolve to the same rows with stable point ids."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from colray.config import ConfigError, SourceConfig
from colray.rows import ID, KEY, LOCATION, binary_array, point_id
from colray.sources import read_dataset, read_piece, resolve_source

ROWS = [
    {"doc_id": f"d{i}", "text": f"document number {i}", "title": f"T{i}", "n": i} for i in range(30)
]


def rows_of(source) -> list[dict]:
    return [r for piece in source.pieces for t in read_piece(source, piece) for r in t.to_pylist()]


@pytest.fixture()
def parquet_dir(tmp_path):
    root = tmp_path / "pq"
    (root / "sub").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ROWS[:10]), root / "a.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS[10:]), root / "sub" / "b.parquet", row_group_size=7)
    (root / "notes.txt").write_text("ignored")
    return root


def test_point_id_is_uuid5_of_source_and_key() -> None:
    pid = point_id("my-source", "d1")
    assert uuid.UUID(pid).version == 5
    assert pid == point_id("my-source", "d1")
    assert pid != point_id("other-source", "d1")  # two datasets never collide


def test_directory_glob_file_and_uri_read_the_same_rows(parquet_dir) -> None:
    variants = [
        str(parquet_dir),
        str(parquet_dir / "**" / "*.parquet"),
        f"file://{parquet_dir}",
    ]
    for path in variants:
        source = resolve_source(
            SourceConfig(
                path=path, text_column="text", id_column="doc_id", name="s", rows_per_block=4
            )
        )
        rows = rows_of(source)
        assert source.num_rows == 30
        assert sorted(r["doc_id"] for r in rows) == sorted(r["doc_id"] for r in ROWS), path
        assert all(r[ID] == point_id("s", r["doc_id"]) for r in rows)
    single = resolve_source(SourceConfig(path=str(parquet_dir / "a.parquet"), text_column="text"))
    assert single.num_rows == 10


def test_without_id_column_the_key_is_file_and_row(parquet_dir) -> None:
    source = resolve_source(
        SourceConfig(path=str(parquet_dir), text_column="text", name="s", rows_per_block=3)
    )
    rows = rows_of(source)
    keys = [r[KEY] for r in rows]
    assert keys[:2] == ["a.parquet#0", "a.parquet#1"]
    assert "sub/b.parquet#19" in keys and len(set(keys)) == 30
    assert all(r[LOCATION] == r[KEY] for r in rows)
    # Row numbers continue across row groups and blocks: row 13 of b.parquet is ROWS[23].
    by_key = {r[KEY]: r for r in rows}
    assert by_key["sub/b.parquet#13"]["text"] == "document number 23"


def test_missing_and_mistyped_columns_are_config_errors(parquet_dir) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_source(
            SourceConfig(path=str(parquet_dir), text_column="body", payload_columns=["title"])
        )
    assert "'body'" in str(err.value) and "a.parquet" in str(err.value)
    with pytest.raises(ConfigError, match="expected a string column"):
        resolve_source(SourceConfig(path=str(parquet_dir), text_column="n"))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_source(SourceConfig(path=str(parquet_dir / "missing"), text_column="text"))
    with pytest.raises(ConfigError, match="no data files"):
        resolve_source(SourceConfig(path=str(parquet_dir / "*.csv"), text_column="text"))


def test_hf_save_to_disk_and_parquet_export(tmp_path) -> None:
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    dataset.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": dataset, "test": dataset.select(range(5))}).save_to_disk(
        str(tmp_path / "dict")
    )
    export = tmp_path / "export" / "data"
    export.mkdir(parents=True)
    dataset.to_parquet(str(export / "train-00000-of-00001.parquet"))
    dataset.select(range(5)).to_parquet(str(export / "test-00000-of-00001.parquet"))
    for path, split, expected in [
        ("saved", "train", 30),
        ("dict", "train", 30),
        ("dict", "test", 5),
        ("export", "train", 30),
        ("export", "test", 5),
    ]:
        source = resolve_source(
            SourceConfig(
                path=str(tmp_path / path),
                format="hf",
                split=split,
                text_column="text",
                id_column="doc_id",
                name="hf",
            )
        )
        rows = rows_of(source)
        assert len(rows) == expected == source.num_rows, (path, split)
        assert rows[0][ID] == point_id("hf", rows[0]["doc_id"])


def test_ray_reads_every_row_once(ray_session, parquet_dir) -> None:
    source = resolve_source(
        SourceConfig(
            path=str(parquet_dir),
            text_column="text",
            id_column="doc_id",
            payload_columns=["title"],
            rows_per_block=4,
        )
    )
    rows = read_dataset(source).take_all()
    assert sorted(r["doc_id"] for r in rows) == sorted(r["doc_id"] for r in ROWS)
    assert len({r[ID] for r in rows}) == 30


def test_unreadable_file_is_set_aside_and_named(parquet_dir, tmp_path) -> None:
    (parquet_dir / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    source = resolve_source(SourceConfig(path=str(parquet_dir), text_column="text"))
    assert [rel for rel, _ in source.unreadable] == ["broken.parquet"]
    assert source.num_rows > 0  # the readable files still count
    only = tmp_path / "only"
    only.mkdir()
    (only / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ConfigError, match=r"broken\.parquet cannot be read as parquet"):
        resolve_source(SourceConfig(path=str(only), text_column="text"))


def test_dictionary_encoded_text_is_read_as_text(tmp_path) -> None:
    table = pa.Table.from_pylist(ROWS[:5])
    index = table.column_names.index("text")
    table = table.set_column(index, "text", table.column("text").dictionary_encode())
    pq.write_table(table, tmp_path / "cat.parquet")
    source = resolve_source(SourceConfig(path=str(tmp_path), text_column="text"))
    rows = [r for piece in source.pieces for t in read_piece(source, piece) for r in t.to_pylist()]
    assert [r["text"] for r in rows] == [r["text"] for r in ROWS[:5]]


def test_docstring_corpus_keeps_tests_and_private_modules_apart(tmp_path) -> None:
    from colray.demo import python_docstrings

    doc = '"""{} explains what this module is for, at enough length to count."""\n'
    for relative in ["pkg/api.py", "pkg/tools.py", "pkg/_internal.py", "tests/test_pkg.py"]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(doc.format(relative))
    library = [row["doc_id"] for row in python_docstrings(tmp_path)]
    aside = [row["doc_id"] for row in python_docstrings(tmp_path, set_aside=True)]
    assert library == ["pkg.api", "pkg.tools"]
    assert aside == ["pkg._internal", "tests.test_pkg"]


@pytest.mark.parametrize(
    "values",
    [[b"page", None, b"", b"pixels" * 1000], [b"one"], [], [None, None], [b"x"] * 9 + [None]],
)
def test_a_binary_column_built_in_one_copy_equals_arrows_own(values):
    built = binary_array(values)
    built.validate(full=True)
    assert built.equals(pa.array(values, pa.binary())) and built.to_pylist() == values
