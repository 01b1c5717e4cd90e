"""What a new user tripped over, each fixed: a missing split, queries that failed with tracebacks,
local runs asked of Ray, reports that did not say what ran, stale points, and unhelpful errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from colray.cli import main
from colray.config import ConfigError, SourceConfig, load_settings
from colray.demo import write_corpus
from colray.sources import resolve_source
from faults import interruptible

ROWS = [{"doc_id": f"d{i}", "text": f"document number {i} about zip archives"} for i in range(8)]


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[0].startswith("colray:"), err
    return "\n".join(lines)


# --- sources ---------------------------------------------------------------------------------


def test_a_split_that_does_not_exist_is_refused_naming_the_ones_that_do(tmp_path):
    import datasets

    dataset = datasets.Dataset.from_list(ROWS)
    datasets.DatasetDict({"train": dataset, "test": dataset}).save_to_disk(str(tmp_path / "dict"))
    export = tmp_path / "export" / "data"
    export.mkdir(parents=True)
    dataset.to_parquet(str(export / "train-00000-of-00001.parquet"))
    dataset.to_parquet(str(export / "test-00000-of-00001.parquet"))
    for folder in ("dict", "export"):
        cfg = SourceConfig(path=str(tmp_path / folder), format="hf", split="validation",
                           text_column="text")  # fmt: skip
        with pytest.raises(ConfigError) as err:
            resolve_source(cfg)
        assert "source.split: 'validation' is not a split" in str(err.value)
        assert "test, train" in str(err.value)  # the splits there are


def test_a_save_to_disk_folder_read_as_parquet_suggests_format_hf(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(ConfigError, match=r"save_to_disk folder: set source\.format=hf"):
        resolve_source(SourceConfig(path=str(tmp_path / "saved"), text_column="text"))


# --- settings --------------------------------------------------------------------------------


def test_near_misses_and_environment_typos_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("COLRAY_SINK__PAHT", "/somewhere")
    base = {"source": {"path": str(tmp_path), "text_column": "text"}}
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["source.text_colum=body"], base=base)
    problems = err.value.problems
    assert "source.text_colum: unknown key; did you mean 'text_column'?" in problems
    assert any(p.startswith("sink.paht: unknown key") and "environment variable COLRAY_SINK__PAHT"
               in p for p in problems)  # fmt: skip


def test_the_sink_defaults_to_the_store_the_template_shows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, base={"source": {"path": ".", "text_column": "t"}})
    assert (settings.sink.kind, settings.sink.path) == ("edge", str(tmp_path / ".colray/store"))
    settings = load_settings(None, base={"source": {"path": ".", "text_column": "t"}, "sink": {}})
    assert settings.sink.path == str(tmp_path / ".colray/store")


def test_a_missing_api_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"sink.api_key_file: no such file"):
        load_settings(None, base={"source": {"path": str(tmp_path), "text_column": "t"},
                                  "sink": {"kind": "qdrant", "url": "http://q:6333",
                                           "api_key_file": str(tmp_path / "nope")}})  # fmt: skip


def test_a_hub_model_that_cannot_be_downloaded_says_so():
    from colray.embed import resolve_model_dir

    with pytest.raises(ValueError, match="Hugging Face Hub id, and the Hub could not provide it"):
        resolve_model_dir("no-such-org/no-such-model")


def test_help_names_five_sections_and_a_sample_of_its_own(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--help"])
    text = capsys.readouterr().out
    assert "sections source, embed (text model), image (page-image" in text
    assert "# configs/stdlib-minilm-edge.yaml" not in text
    assert "relative paths are relative to the current directory" in text


# --- queries ---------------------------------------------------------------------------------


def query_job(tmp_path: Path, **sink) -> Path:
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "source": {"path": str(path), "text_column": "text", "id_column": "doc_id"},
        "sink": {"kind": "edge", "path": str(tmp_path / "store"), **sink},
        "run": {"dir": str(tmp_path / "runs"), "progress": False},
    }))  # fmt: skip
    return job


def test_queries_fail_in_one_line(tmp_path, capsys, onnx_cache):
    job = query_job(tmp_path)
    assert main(["query", "-c", str(job), ""]) == 2
    assert "TEXT: the query is empty" in one_line_error(capsys.readouterr().err)
    assert main(["query", "-c", str(job), "zip"]) == 2  # no store there yet
    assert "no store at" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "store").exists()  # ... and the query made none
    code = main(["query", "-c", str(job), "--set", "embed.model=no-such-model", "zip"])
    assert code == 2 and "embed.model" in one_line_error(capsys.readouterr().err)
    server = ["--set", "sink.kind=qdrant", "--set", "sink.path=null", "--set",
              "sink.url=http://127.0.0.1:9", "--set", "sink.retry_attempts=1"]  # fmt: skip
    assert main(["query", "-c", str(job), *server, "zip"]) == 2
    assert "cannot reach the server at http://127.0.0.1:9" in one_line_error(
        capsys.readouterr().err
    )


def test_a_query_on_a_local_store_held_by_another_process_says_so(tmp_path, capsys):
    job = query_job(tmp_path)
    local = ["--set", "sink.kind=qdrant", "--set", f"sink.path={tmp_path / 'local'}"]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from qdrant_client import QdrantClient; "
         f"c = QdrantClient(path={str(tmp_path / 'local')!r}); print('open', flush=True); "
         "time.sleep(60)"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        assert main(["query", "-c", str(job), *local, "zip"]) == 2
        err = one_line_error(capsys.readouterr().err)
        assert "is open in another process (a running ingest?)" in err
    finally:
        holder.kill()


def test_a_local_run_id_is_pointed_at_colray_runs(capsys):
    assert main(["status", "20261203T101500Z-1a2b3c"]) == 2
    assert "colray runs show 20261203T101500Z-1a2b3c" in one_line_error(capsys.readouterr().err)


# --- reports and re-runs ---------------------------------------------------------------------


@pytest.mark.slow
def test_reports_say_what_ran_and_reruns_point_at_stale_points(
    ray_session, tmp_path, module_docs, onnx_cache, capsys
):
    corpus = write_corpus(module_docs[:20], tmp_path / "docs.parquet")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                   "name": "docs"},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs"), "progress": False},
    }))  # fmt: skip
    assert main(["ingest", "-c", str(job), "--set", "embed.batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "ingested 20 points" in out  # the summary is the result: on stdout
    report = json.loads(Path(out.split("report: ")[1].split()[0]).read_text())
    assert report["config"] == str(job) and report["overrides"] == ["embed.batch_size=8"]
    assert report["mode"] == "ingest" and report["exit_code"] == 0 and report["colray_version"]
    assert report["outcome"] == "succeeded"
    # Fewer rows now: the store still holds the old ones, and the summary says so.
    write_corpus(module_docs[:15], corpus)
    assert main(["ingest", "-c", str(job)]) == 0
    out = capsys.readouterr().out
    assert "note: 5 of the store's points are not from this run's rows" in out
    assert "--incremental" in out


def test_an_interrupted_run_leaves_a_report_that_says_so(ray_session, tmp_path, module_docs,
                                                         onnx_cache):  # fmt: skip
    corpus = write_corpus(module_docs[:200], tmp_path / "docs", rows_per_file=20)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                   "rows_per_block": 8},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs"), "progress": False,
                "ray_address": ray_session.get_runtime_context().gcs_address},
    }))  # fmt: skip
    with interruptible():
        run = subprocess.Popen([sys.executable, "-m", "colray.cli", "ingest", "-c", str(job)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        logs = list((tmp_path / "runs").glob("resume/*/done.log"))
        if logs and len(logs[0].read_text().splitlines()) >= 16:
            break
        time.sleep(0.1)
    run.send_signal(2)  # Ctrl-C
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert "colray: interrupted" in err
    report = json.loads(Path(err.split("report: ")[1].split()[0]).read_text())
    assert report["outcome"] == "interrupted" and report["exit_code"] == 130
    assert 16 <= report["points_written"] < 200
    assert os.path.exists(report["dead_letter_path"])


@pytest.mark.slow
def test_a_run_that_starts_its_own_ray_keeps_rays_chatter_off_the_console(
    tmp_path, module_docs, onnx_cache
):
    """Without -v, stderr carries colray's phase lines and bar only: no raylet or core-worker
    lines, no log-level notice, no Ray Data warnings; the summary is on stdout."""
    corpus = write_corpus(module_docs[:10], tmp_path / "docs", rows_per_file=10)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id"},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs"), "executor": "ray"},
    }))  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "COLRAY_"))}
    run = subprocess.run([sys.executable, "-m", "colray.cli", "ingest", "-c", str(job)],
                         capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ingested 10 points from 10 rows")
    lines = [part.strip() for line in run.stderr.splitlines() for part in line.split("\r")]
    others = [line for line in lines if line and not line.startswith(("· ", "written:"))]
    assert others == [], others
    assert "· starting Ray" in run.stderr and "· indexing" in run.stderr


@pytest.mark.slow
def test_a_query_with_no_results_says_so_and_a_missing_key_file_is_one_line(
    tmp_path, capsys, onnx_cache, monkeypatch
):
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")  # a two-row job: no Ray needed
    job = query_job(tmp_path)
    # Every row dead-lettered: a store that exists and holds nothing.
    blanks = [{"doc_id": "a", "title": "t", "text": " "}, {"doc_id": "b", "title": "t", "text": ""}]
    pq.write_table(pa.Table.from_pylist(blanks), tmp_path / "docs.parquet")
    cache = ["--set", f"embed.cache_dir={onnx_cache}"]
    assert main(["ingest", "-c", str(job), *cache, "--set", "run.max_failed_fraction=1"]) == 0
    capsys.readouterr()
    assert main(["query", "-c", str(job), *cache, "zip archives"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "no results: the store holds no points" in err
    assert main(["query", "-c", str(job), *cache, "--json", "zip archives"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    server = ["--set", "sink.kind=qdrant", "--set", "sink.path=null", "--set",
              "sink.url=http://127.0.0.1:9", "--set", f"sink.api_key_file={tmp_path / 'nokey'}"]  # fmt: skip
    assert main(["query", "-c", str(job), *server, "zip"]) == 2
    assert "sink.api_key_file" in one_line_error(capsys.readouterr().err)
