"""Config layering and validation: YAML < COLRAY_* environment < --set."""

from __future__ import annotations

from pathlib import Path

import pytest

from colray.config import API_KEY_ENV, ConfigError, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


BASE = """
source: {path: data.parquet, text_column: text, payload_columns: [title]}
sink: {kind: edge, path: store}
embed: {batch_size: 16}
"""


def test_precedence_yaml_env_set(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLRAY_EMBED__BATCH_SIZE", "8")
    monkeypatch.setenv("COLRAY_SINK__PATH", "from-env")
    settings = load_settings(write(tmp_path, BASE), ["sink.path=from-set", "source.id_column=001"])
    assert settings.embed.batch_size == 8  # env beats YAML
    assert settings.sink.path == str(Path.cwd() / "from-set")  # --set beats env
    assert settings.source.id_column == "001"  # not turned into the number 1
    assert settings.source.payload_columns == ["title"]


def test_set_parses_lists(tmp_path) -> None:
    settings = load_settings(write(tmp_path, BASE), ["source.payload_columns=[a, b]"])
    assert settings.source.payload_columns == ["a", "b"]


def test_every_bad_field_is_reported_on_its_own_line(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            write(tmp_path, BASE),
            ["embed.batch_size=abc", "embed.colour=red", "sink.kind=mongo"],
        )
    problems = err.value.problems
    assert any(p.startswith("embed.batch_size:") and "integer" in p for p in problems)
    assert any(p.startswith("embed.colour:") and "unknown key" in p for p in problems)
    assert any(p.startswith("sink.kind:") and "'edge' or 'qdrant'" in p for p in problems)


def test_missing_file_and_missing_required(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "sink: {kind: edge, path: s}\n"))
    assert any(p.startswith("source:") and "required" in p for p in err.value.problems)


def test_sink_target_rules(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"exactly one of sink\.url"):
        load_settings(write(tmp_path, BASE), ["sink.kind=qdrant", "sink.url=http://q:6333"])
    settings = load_settings(
        write(tmp_path, BASE), ["sink.kind=qdrant", "sink.path=null", "sink.url=http://q:6333"]
    )
    assert settings.sink.url == "http://q:6333"


def test_api_key_only_from_environment_or_file(tmp_path, monkeypatch) -> None:
    secret = "s3cr3t-key-value"
    in_yaml = (
        f"source: {{path: d, text_column: t}}\nsink: {{kind: edge, path: s, api_key: {secret}}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, in_yaml))
    assert "must not be written in a config file" in str(err.value)
    assert secret not in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, BASE), [f"sink.api_key={secret}"])
    assert secret not in str(err.value)
    monkeypatch.setenv(API_KEY_ENV, secret)
    settings = load_settings(write(tmp_path, BASE))
    assert settings.sink.resolved_api_key() == secret
    assert secret not in repr(settings) and secret not in settings.model_dump_json()
    key_file = tmp_path / "key"
    key_file.write_text(secret + "\n")
    monkeypatch.delenv(API_KEY_ENV)
    settings = load_settings(write(tmp_path, BASE), [f"sink.api_key_file={key_file}"])
    assert settings.sink.resolved_api_key() == secret


def test_local_paths_become_absolute_in_the_driver(tmp_path, monkeypatch) -> None:
    """Ray workers may run in another folder (uv run packages the project): no relative paths."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "model").mkdir()
    settings = load_settings(
        write(
            tmp_path, "source: {path: docs, text_column: text}\nsink: {kind: edge, path: store}\n"
        ),
        ["embed.model=model", "embed.cache_dir=cache"],
    )
    assert settings.source.path == str(tmp_path / "docs")
    assert settings.sink.path == str(tmp_path / "store")
    assert settings.run.dir == str(tmp_path / ".colray" / "runs")
    assert settings.embed.model == str(tmp_path / "model")
    assert settings.embed.cache_dir == str(tmp_path / "cache")
    hub = load_settings(
        write(
            tmp_path,
            "source: {path: org/name, format: hf, text_column: t}\nsink: {kind: edge, path: s}\n",
        )
    )
    assert hub.source.path == "org/name" and hub.embed.model == "minilm-token"


def test_ray_uv_repackaging_is_off_by_default() -> None:
    import os

    import colray  # noqa: F401  (the package sets the default on import)

    assert os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0"


@pytest.mark.parametrize("path", sorted(Path(__file__).parent.parent.glob("configs/*.yaml")))
def test_shipped_configs_are_valid(path: Path) -> None:
    settings = load_settings(path)
    assert settings.source.text_column or settings.source.image_column or settings.source.documents
    if settings.source.image_column or settings.source.documents:
        assert settings.image.model
