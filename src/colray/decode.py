"""Image decoding, the CPU stage ahead of the image embedder: any image cell to model-sized RGB.

Bytes, HF Image structs, paths and URIs in; raw RGB pixels out, or the row's error set.
"""

from __future__ import annotations

import io
import time
import warnings
from typing import Any

import pyarrow as pa

from colray.cells import CellRejected, cell_bytes
from colray.embed.colpali import ImageGeometry
from colray.rows import (
    DECODE,
    DECODE_SECONDS,
    ERROR,
    HEIGHT,
    PIXELS,
    WIDTH,
    binary_array,
    reason,
    with_stage_seconds,
)


class ImageRejected(ValueError):
    """An image that will not be embedded; the message says why."""


def decode_image(cell: Any, geometry: ImageGeometry, max_pixels: int) -> tuple[bytes, int, int]:
    """One cell as RGB pixels at the model's size: EXIF orientation applied, bombs refused."""
    from PIL import Image, ImageOps

    try:
        data = cell_bytes(cell)
    except CellRejected as exc:
        raise ImageRejected(str(exc)) from None
    with warnings.catch_warnings():
        # PIL warns between MAX_IMAGE_PIXELS and twice that; we refuse by our own limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            image = Image.open(io.BytesIO(data))  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"{width}x{height} = {width * height} pixels exceeds image.max_pixels "
                    f"({max_pixels})"
                )
            image = ImageOps.exif_transpose(image).convert("RGB")
        except ImageRejected:
            raise
        except Exception as exc:
            raise ImageRejected(f"cannot decode image: {type(exc).__name__}: {exc}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    try:
        target = geometry.target_size(*image.size)
    except ValueError as exc:  # e.g. a strip too long and thin for the model's resizing
        raise ImageRejected(str(exc)) from None
    if target != image.size:
        image = image.resize(target, Image.Resampling.BICUBIC)
    return image.tobytes(), image.width, image.height


def decode_images(
    table: pa.Table, *, image_column: str, geometry: ImageGeometry, max_pixels: int
) -> pa.Table:
    """Ray Data batch function: adds the pixel columns, drops the raw image column."""
    start = time.perf_counter()
    cells = table.column(image_column).to_pylist()
    errors = table.column(ERROR).to_pylist()
    pixels: list[bytes | None] = [None] * len(cells)
    widths = [0] * len(cells)
    heights = [0] * len(cells)
    for i, cell in enumerate(cells):
        if errors[i] is not None:
            continue
        try:
            pixels[i], widths[i], heights[i] = decode_image(cell, geometry, max_pixels)
        except ImageRejected as exc:
            errors[i] = reason(DECODE, "ImageRejected", str(exc))
    out = table.drop_columns([image_column, ERROR])
    out = (
        out.append_column(ERROR, pa.array(errors, pa.string()))
        .append_column(PIXELS, binary_array(pixels))
        .append_column(WIDTH, pa.array(widths, pa.int32()))
        .append_column(HEIGHT, pa.array(heights, pa.int32()))
    )
    return with_stage_seconds(out, DECODE_SECONDS, time.perf_counter() - start)
