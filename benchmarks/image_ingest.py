"""Page-image ingest throughput: the raw image embedder vs the colray pipeline, same pages.

On CPU with a tiny ColQwen2 built offline (random weights, real architecture and processor),
so this measures what the pipeline costs around the model, not the model. Both variants run
in one process on the same pages; the ratio is on the last line.

    uv run python benchmarks/image_ingest.py [--pages 400]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import colray
from colray.config import load_settings
from colray.embed.colpali import ColPaliFamilyEmbedder, describe_image_model
from colray.pipeline import ensure_ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from tiny_vision_models import build_tiny_colqwen2


def page_images(count: int) -> list:
    """Page-like images: white paper with dark text lines and a figure, like scanned pages."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    pages = []
    for _ in range(count):
        width, height = int(rng.integers(600, 1000)), int(rng.integers(800, 1300))
        page = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(page)
        for y in range(40, height - 40, 18):
            draw.rectangle([40, y, int(rng.integers(200, width - 40)), y + 8], fill=(30, 30, 30))
        x, y = int(rng.integers(40, width // 2)), int(rng.integers(40, height // 2))
        draw.ellipse([x, y, x + 150, y + 100], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        pages.append(page)
    return pages


def write_pages(images: list, out: Path) -> Path:
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    blobs = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        blobs.append({"bytes": buffer.getvalue(), "path": None})
    features = Features({"page_id": Value("string"), "image": ImageFeature()})
    dataset = Dataset.from_dict(
        {"page_id": [f"page-{i}" for i in range(len(images))], "image": blobs}, features=features
    )
    out.mkdir(parents=True)
    for shard in range(4):
        dataset.shard(4, shard, contiguous=True).to_parquet(str(out / f"part-{shard}.parquet"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="colray-image-bench-"))
    model = build_tiny_colqwen2(work / "tiny-colqwen2")
    images = page_images(args.pages)
    corpus = write_pages(images, work / "pages")
    settings = load_settings(
        None,
        base={
            "source": {"path": str(corpus), "image_column": "image", "id_column": "page_id"},
            "image": {"model": str(model), "batch_size": args.batch_size, "rows_per_call": 32,
                      "cpus_per_actor": 1, "decode_cpus": 0.5},
            "sink": {"kind": "edge", "path": str(work / "store"), "indexing_threshold_kb": 10**9},
            "run": {"dir": str(work / "runs"), "progress": False},
        },
    )  # fmt: skip
    info = describe_image_model(str(model))
    embedder = ColPaliFamilyEmbedder(info, settings.image)
    resized = [im.resize(info.geometry.target_size(*im.size)) for im in images]
    embedder.embed_images(resized[:8])  # warm-up

    start = time.perf_counter()
    pages = embedder.embed_images(resized)
    raw_s = time.perf_counter() - start
    vectors = sum(len(p.vectors) for p in pages)

    ensure_ray(settings)  # once per cluster, as for the text benchmark
    import ray  # after colray, whose import sets Ray's environment defaults

    ray.data.range(10).map_batches(lambda batch: batch).take_all()
    start = time.perf_counter()
    report = colray.ingest(settings)
    pipeline_s = time.perf_counter() - start
    assert report.points_written == args.pages, report

    print(f"pages: {args.pages} page-like PNGs 600-1300 px, tiny ColQwen2 (CPU), {vectors} vectors")
    print(f"{'variant':<26}{'pages/s':>10}{'seconds':>10}")
    print(f"{'raw embedder (forward)':<26}{args.pages / raw_s:>10.1f}{raw_s:>10.1f}")
    print(f"{'colray pipeline':<26}{args.pages / pipeline_s:>10.1f}{pipeline_s:>10.1f}")
    print(f"pipeline stages (s): {report.stages_s} first block after {report.first_block_s}s")
    print(f"pipeline/raw={raw_s / pipeline_s:.2f} pages={args.pages}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
