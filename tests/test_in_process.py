"""run.executor: small text jobs run every stage in the driver's process with no Ray, and give the
same points, vectors, dead letters, resume and incremental behaviour as the Ray path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import colray
from colray.config import ConfigError, load_settings
from colray.demo import write_corpus
from colray.job import runs_in_process
from colray.layout import VectorSpec
from colray.sink import open_sink
from faults import kill_midway_then_rerun


def settings_with(tmp_path: Path, **sections) -> colray.Settings:
    base = {
        "source": {"path": str(tmp_path), "text_column": "text"},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs")},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(None, base=base)


def test_auto_keeps_small_jobs_on_one_machine_off_ray(tmp_path, monkeypatch):
    monkeypatch.delenv("COLRAY_RUN__EXECUTOR")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    auto = settings_with(tmp_path)
    assert auto.run.executor == "auto"
    assert runs_in_process(auto, 1000)
    assert not runs_in_process(auto, 1001)  # run.local_max_rows
    pages = settings_with(tmp_path, source={"text_column": None, "image_column": "image"},
                          image={"model": str(tmp_path)})  # fmt: skip
    assert runs_in_process(pages, 100)
    local_mode = settings_with(tmp_path, sink={"kind": "qdrant", "path": str(tmp_path / "q")})
    assert runs_in_process(local_mode, 10)
    server = settings_with(tmp_path, sink={"kind": "qdrant", "path": None,
                                           "url": "http://127.0.0.1:6333"})  # fmt: skip
    assert not runs_in_process(server, 10)  # writer actors
    for asks_for_ray in ({"ray_address": "auto"}, {"metrics_port": 9100}):
        assert not runs_in_process(settings_with(tmp_path, run=asks_for_ray), 10)
    assert not runs_in_process(settings_with(tmp_path, embed={"num_gpus": 1}), 10)
    with monkeypatch.context() as inside_a_ray_job:  # a submitted job's driver
        inside_a_ray_job.setenv("RAY_ADDRESS", "10.0.0.1:6379")
        assert not runs_in_process(auto, 10)
    assert not runs_in_process(settings_with(tmp_path, embed={"num_actors": 2}), 10)
    page_gpu = settings_with(tmp_path, source={"text_column": None, "image_column": "image"},
                             image={"model": str(tmp_path), "num_gpus": 0.5})  # fmt: skip
    assert not runs_in_process(page_gpu, 10)
    # Asked for by name, either way, whatever the size.
    assert runs_in_process(settings_with(tmp_path, run={"executor": "local"}), 10**6)
    assert not runs_in_process(settings_with(tmp_path, run={"executor": "ray"}), 1)


@pytest.mark.parametrize("conflict", [{"ray_address": "auto"}, {"metrics_port": 9100}])
def test_local_refuses_what_only_ray_can_do(tmp_path, conflict, monkeypatch):
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")
    with pytest.raises(ConfigError) as err:
        settings_with(tmp_path, run=conflict)
    assert "run.executor: local" in str(err.value)
    assert "run." + next(iter(conflict)) in str(err.value)


def job_file(tmp_path: Path, corpus: Path, onnx_cache: str, store: str) -> Path:
    config = {
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                   "payload_columns": ["title"], "rows_per_block": 8},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 8},
        "sink": {"kind": "edge", "path": str(tmp_path / store)},
        "run": {"dir": str(tmp_path / "runs"), "progress": False},
    }  # fmt: skip
    path = tmp_path / f"{store}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def stored_vectors(config: Path) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    settings = load_settings(config)
    from colray.job import prepare_job

    store = open_sink(settings.sink, prepare_job(settings).layout)
    store.open_for_reading()
    points = {h.id: h for h in store.retrieve_all()}
    store.close()
    return {
        pid: (np.asarray(h.vectors["text"]), np.asarray(h.vectors["text_muvera"]), h.payload)
        for pid, h in points.items()
    }


@pytest.mark.slow
def test_in_process_stores_what_ray_stores_and_never_starts_ray(
    ray_session, tmp_path, module_docs, onnx_cache, monkeypatch
):
    corpus = write_corpus(module_docs[:30], tmp_path / "docs", rows_per_file=12)
    on_ray = job_file(tmp_path, corpus, onnx_cache, "ray-store")
    assert colray.ingest(on_ray).executor == "ray"

    in_process = job_file(tmp_path, corpus, onnx_cache, "local-store")
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "auto")  # the default a user gets
    code = (
        "import sys, colray, ray; report = colray.ingest(sys.argv[1]); "
        "assert not ray.is_initialized(), 'Ray was started'; print(report.report_path)"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # ray_session's
    run = subprocess.run([sys.executable, "-c", code, str(in_process)], capture_output=True,
                         text=True, timeout=300, env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(Path(run.stdout.strip().splitlines()[-1]).read_text())
    assert report["executor"] == "local" and report["outcome"] == "succeeded"
    assert report["rows_read"] == report["points_written"] == report["points_in_store"] == 30

    expected, got = stored_vectors(on_ray), stored_vectors(in_process)
    assert set(got) == set(expected)
    for pid, (tokens, muvera, payload) in got.items():
        want_tokens, want_muvera, want_payload = expected[pid]
        np.testing.assert_allclose(tokens, want_tokens, atol=1e-5)
        np.testing.assert_allclose(muvera, want_muvera, atol=1e-4)
        assert payload == want_payload  # the same key, location, hash and columns

    # No-op incremental: every row unchanged, nothing embedded or written.
    again = colray.ingest(in_process, incremental=True)
    assert again.executor == "local" and again.mode == "ingest --incremental"
    assert again.incremental == {"unchanged": 30, "updated": 0, "added": 0, "deleted": 0}
    assert again.points_written == 0 and again.points_in_store == 30
    assert again.stages_s.get("embed", 0) < 0.2  # the model (seconds to load) never loaded


@pytest.mark.slow
def test_a_killed_in_process_run_resumes_without_redoing_or_duplicating(
    tmp_path, module_docs, onnx_cache, monkeypatch
):
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")
    corpus = write_corpus(module_docs[:120], tmp_path / "docs", rows_per_file=40)
    config = job_file(tmp_path, corpus, onnx_cache, "store")
    report_path = tmp_path / "second.json"
    done_before, second = kill_midway_then_rerun(config, tmp_path / "runs", report_path, 16)
    assert 16 <= done_before < 120
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["executor"] == "local" and report["rows_read"] == 120
    assert report["skipped_existing"] >= done_before
    assert report["points_written"] + report["skipped_existing"] == 120
    assert report["points_in_store"] == 120  # every row once, none twice
    store = open_sink(load_settings(config).sink, [VectorSpec("text", 384)])
    store.open_for_reading()
    assert len({h.id for h in store.retrieve_all(with_vectors=False)}) == 120
    store.close()
