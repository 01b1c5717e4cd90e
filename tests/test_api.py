"""The public Python API: a lazy `import colray`, ingest then search from Python, and a failed run
that releases everything it opened."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import colray
from colray.demo import write_corpus

ROOT = Path(__file__).resolve().parents[1]


def test_import_colray_loads_neither_ray_nor_torch():
    code = (
        "import colray, sys; colray.ingest; colray.search; colray.reindex; colray.load_settings; "
        "assert 'ray' not in sys.modules and 'torch' not in sys.modules, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch'))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


def test_public_names_survive_importing_every_submodule():
    # A submodule named like a public function would replace it on the package once imported.
    for module in pkgutil.walk_packages(colray.__path__, "colray."):
        importlib.import_module(module.name)
    for name in colray.__all__:
        home = importlib.import_module(colray._HOMES[name])
        assert getattr(colray, name) is getattr(home, name), name
    assert callable(colray.search) and callable(colray.reindex) and callable(colray.ingest)


def job_yaml(tmp_path: Path, corpus: Path, onnx_cache: str, **run) -> Path:
    config = {
        "source": {"path": str(corpus), "text_column": "text", "id_column": "doc_id",
                   "payload_columns": ["title"], "rows_per_block": 16},
        "embed": {"model": "minilm-token", "cache_dir": onnx_cache},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs"), "progress": False, **run},
    }  # fmt: skip
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_ingest_then_search_from_python(ray_session, tmp_path, module_docs, onnx_cache):
    corpus = write_corpus(module_docs[:40], tmp_path / "docs", rows_per_file=20)
    job = job_yaml(tmp_path, corpus, onnx_cache)
    report = colray.ingest(job, overrides=["embed.rows_per_call=8"])
    assert isinstance(report, colray.RunReport)
    assert report.rows_read == report.points_written == report.points_in_store == 40
    doc = max(module_docs[:40], key=lambda d: len(d["text"]))
    query = " ".join(doc["text"].split()[:12])
    hits = colray.search(job, query, limit=3)
    assert [type(h) for h in hits] == [colray.Hit] * 3
    assert hits[0].payload["title"] == doc["title"]
    assert hits[0].score >= hits[1].score >= hits[2].score > 0
    # The same job as a mapping, and as Settings: the same answer.
    as_dict = yaml.safe_load(job.read_text())
    assert [h.id for h in colray.search(as_dict, query, limit=3)] == [h.id for h in hits]
    settings = colray.load_settings(job)
    assert [h.id for h in colray.search(settings, query, limit=3)] == [h.id for h in hits]
    with pytest.raises(ValueError, match="Settings are final"):
        colray.ingest(settings, overrides=["embed.batch_size=4"])


@pytest.mark.slow
def test_a_run_that_fails_after_opening_the_store_releases_it(
    ray_session, tmp_path, module_docs, onnx_cache
):
    """The store is opened and Ray Data's context changed before the run's folder is made;
    a failure there must close the store and put the context back for the next run."""
    corpus = write_corpus(module_docs[:20], tmp_path / "docs", rows_per_file=10)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the run folder should go")
    ctx = ray_session.data.DataContext.get_current()
    before = (ctx.target_max_block_size, ctx.execution_options.preserve_order)
    failing = job_yaml(tmp_path, corpus, onnx_cache, dir=str(blocker / "runs"))
    with pytest.raises(OSError):
        colray.ingest(failing)
    assert (ctx.target_max_block_size, ctx.execution_options.preserve_order) == before
    # Same process, same store: it opens (an Edge store left open would refuse, "WouldBlock").
    report = colray.ingest(job_yaml(tmp_path, corpus, onnx_cache))
    assert report.points_written == report.points_in_store == 20
