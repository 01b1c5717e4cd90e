"""The command line: bad configs exit 2 before any work, help teaches, models are listed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from colray.cli import EXIT_CONFIG, main


@pytest.fixture()
def data(tmp_path) -> Path:
    path = tmp_path / "docs.parquet"
    rows = [{"doc_id": "a", "text": "zip archives", "title": "zipfile"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def job(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(body)
    return path


def assert_nothing_written(tmp_path: Path) -> None:
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "runs").exists()


def valid_body(data: Path, tmp_path: Path) -> str:
    return (
        f"source: {{path: {data}, text_column: text, id_column: doc_id}}\n"
        f"sink: {{kind: edge, path: {tmp_path / 'store'}}}\n"
        f"run: {{dir: {tmp_path / 'runs'}, progress: false}}\n"
    )


def test_missing_config_file(tmp_path, capsys) -> None:
    assert main(["ingest", "--config", str(tmp_path / "nope.yaml")]) == EXIT_CONFIG
    assert "not found" in capsys.readouterr().err
    assert_nothing_written(tmp_path)


def test_unknown_key_and_wrong_type_each_on_own_line(data, tmp_path, capsys) -> None:
    body = valid_body(data, tmp_path) + "embed: {batch_size: lots, colour: blue}\n"
    assert main(["ingest", "--config", str(job(tmp_path, body))]) == EXIT_CONFIG
    err = capsys.readouterr().err.splitlines()
    assert any(line.strip().startswith("embed.batch_size:") and "integer" in line for line in err)
    assert any(line.strip().startswith("embed.colour: unknown key") for line in err)
    assert_nothing_written(tmp_path)


def test_missing_column_in_the_data(data, tmp_path, capsys) -> None:
    body = valid_body(data, tmp_path)
    code = main(
        ["ingest", "--config", str(job(tmp_path, body)), "--set", "source.payload_columns=[author]"]
    )
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "'author'" in err and "docs.parquet" in err and "doc_id, text, title" in err
    assert_nothing_written(tmp_path)


@pytest.mark.slow
def test_query_json_then_incompatible_store_fails_before_embedding(
    data, tmp_path, capsys, ray_session, tiny_colbert, onnx_cache
) -> None:
    body = valid_body(data, tmp_path) + f"embed: {{cache_dir: {onnx_cache}}}\n"
    assert main(["ingest", "--config", str(job(tmp_path, body))]) == 0
    capsys.readouterr()
    assert main(["query", "--config", str(job(tmp_path, body)), "--json", "zip archives"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [set(h) for h in hits] == [{"id", "score", "payload"}]
    assert hits[0]["payload"]["_colray"]["key"] == "a" and hits[0]["score"] > 0
    code = main(
        [
            "ingest",
            "--config",
            str(job(tmp_path, body)),
            "--set",
            f"embed.model={tiny_colbert.directory}",
        ]
    )
    assert code == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "incompatible layout" in err and "24 dims" in err


def test_help_teaches(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for expected in ("--set", "--report", "example:", "COLRAY_SINK__API_KEY", "text_column"):
        assert expected in text


def test_models_lists_registry(capsys) -> None:
    assert main(["models", "--json"]) == 0
    models = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert models["minilm-token"]["dims"] == 384
    assert models["answerai-colbert-small-v1"]["profile"] == "colbert"
    pages = {name for name, m in models.items() if m["kind"] == "image"}
    assert pages == {"ColPali", "ColQwen2", "ColQwen2.5", "ColQwen3", "ColQwen3.5",
                     "ColQwen2.5-Omni", "ColGemma3", "ColIdefics3", "ColModernVBert"}  # fmt: skip
    assert models["ColQwen3"]["dims"] == 320 and "pooled=false" in models["ColIdefics3"]["source"]


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "colray"
    result = subprocess.run([str(exe), "models"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "colbertv2.0" in result.stdout
