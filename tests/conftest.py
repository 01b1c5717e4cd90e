"""Shared fixtures: one Ray for the whole session, corpora, and tiny models built once."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from colray.demo import stdlib_docstrings, write_corpus

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# The suite's jobs are small, which run.executor=auto would run in-process; the tests are of
# the Ray path unless they ask for `local` (tests/test_in_process.py).
os.environ.setdefault("COLRAY_RUN__EXECUTOR", "ray")
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def ray_session():
    """Start Ray once: a local cluster costs seconds to start on two cores."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Shared ONNX export cache; CI reuses ~/.cache/colray when COLRAY_TEST_CACHE is unset."""
    return os.environ.get("COLRAY_TEST_CACHE") or str(Path.home() / ".cache" / "colray")


@pytest.fixture(scope="session")
def module_docs() -> list[dict[str, str]]:
    return list(stdlib_docstrings(modules_only=True))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory, module_docs) -> Path:
    """60 real module docstrings in three Parquet files (a directory source)."""
    rows = module_docs[:60]
    return write_corpus(rows, tmp_path_factory.mktemp("corpus") / "docs", rows_per_file=25)


@pytest.fixture(scope="session")
def tiny_colbert(tmp_path_factory: pytest.TempPathFactory, module_docs):
    from tiny_models import build_tiny_colbert

    corpus = [d["text"] for d in module_docs[:200]]
    return build_tiny_colbert(corpus, tmp_path_factory.mktemp("models") / "tiny-colbert")


@pytest.fixture(scope="session")
def vision_models(tmp_path_factory) -> dict[str, Path]:
    from tiny_vision_models import build_tiny_colpali, build_tiny_colqwen2, build_tiny_colqwen2_5

    root = tmp_path_factory.mktemp("vision-models")
    return {
        "colqwen2": build_tiny_colqwen2(root / "colqwen2"),
        "colqwen2_5": build_tiny_colqwen2_5(root / "colqwen2_5"),
        "colpali": build_tiny_colpali(root / "colpali"),
    }


@pytest.fixture(scope="session")
def page_corpus(tmp_path_factory) -> Path:
    """Good and bad page images in the HF `Image` layout (see page_data.py)."""
    from page_data import write_page_corpus

    return write_page_corpus(tmp_path_factory.mktemp("pages") / "pages")
