"""Page images for tests: random pixel pages and a small HF-`Image` dataset of good and bad pages."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_PAGES = 12
BAD_PAGES = {
    "bad-bytes": "cannot decode",
    "bad-truncated": "truncated",
    "bad-huge": "exceeds image.max_pixels",
    "bad-null": "image is null",
}
MAX_PIXELS = 100_000  # good pages are at most 140x110; the huge one is 400x400


def page_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def write_page_corpus(root: Path) -> Path:
    """12 pages in the HF `Image` layout (made with `datasets`, saved as parquet) of mixed
    sizes, plus a corrupt, a truncated, an oversized and a missing image, in two files."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    root.mkdir(parents=True)
    jpeg = png_bytes(page_image(120, 90, 99), "JPEG")
    rows = [
        (f"p{i}", f"page {i} of the quarterly report",
         page_image(60 + 20 * (i % 4), 80 + 10 * (i % 3), i))
        for i in range(GOOD_PAGES)
    ]  # fmt: skip
    rows += [
        ("bad-bytes", "corrupt scan", {"bytes": b"\x89PNG broken", "path": None}),
        ("bad-truncated", "scan cut short", {"bytes": jpeg[: len(jpeg) // 2], "path": None}),
        ("bad-huge", "oversized scan", page_image(400, 400, 98)),
        ("bad-null", "missing scan", None),
    ]
    features = Features(
        {"page_id": Value("string"), "caption": Value("string"), "image": ImageFeature()}
    )
    dataset = Dataset.from_dict(
        {"page_id": [r[0] for r in rows], "caption": [r[1] for r in rows],
         "image": [r[2] for r in rows]},
        features=features,
    )  # fmt: skip
    for shard in range(2):
        dataset.shard(2, shard, contiguous=True).to_parquet(str(root / f"part-{shard}.parquet"))
    return root
