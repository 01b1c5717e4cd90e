"""Sink alone: colray's writer against each engine's own bulk API, same points, same batches.

colray's side starts where the pipeline hands over (Arrow blocks of embedded rows) and goes
through BlockWriter (dead-letter checks, size-bounded batches, retries) into the sink; the
engine's side starts from numpy arrays and calls qdrant-client's `upload_points` or Qdrant
Edge's `upsert_points` directly. Variants alternate on fresh stores; medians are compared.

    uv run python benchmarks/sink_write.py [--repeats 3] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from colray.config import SinkConfig
from colray.layout import VectorSpec
from colray.plan import BLOCK_BYTES
from colray.points import BlockWriter
from colray.rows import ERROR, HASH, ID, KEY, LOCATION, count_column, point_id, vectors_column
from colray.sink import open_sink


@dataclass(frozen=True)
class Shape:
    name: str
    vectors: int  # per point
    dim: int
    batch: int  # points per request: below the 24 MB request cap, so both sides send these


SHAPES = [Shape("ColBERT 300x96", 300, 96, 32), Shape("ColPali 1030x128", 1030, 128, 8)]
# Points per run, per engine: local mode is pure Python and ~50x slower than Edge.
POINTS = {("edge", "ColBERT 300x96"): 2000, ("edge", "ColPali 1030x128"): 400,
          ("qdrant-local", "ColBERT 300x96"): 200, ("qdrant-local", "ColPali 1030x128"): 40}  # fmt: skip


def make_points(shape: Shape, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(size=(shape.vectors, shape.dim)).astype(np.float32) for _ in range(n)]


def blocks_of(shape: Shape, matrices: list[np.ndarray]) -> list[pa.Table]:
    """The embedded blocks the pipeline hands a writer (its ~16 MiB blocks)."""
    per_block = max(1, BLOCK_BYTES // (shape.vectors * shape.dim * 4))
    blocks = []
    for start in range(0, len(matrices), per_block):
        chunk = matrices[start : start + per_block]
        keys = [f"doc-{start + i}" for i in range(len(chunk))]
        blocks.append(
            pa.table({
                "title": [f"title {k}" for k in keys],
                ID: [point_id("bench", k) for k in keys],
                KEY: keys,
                LOCATION: [f"f.parquet#{start + i}" for i in range(len(chunk))],
                ERROR: pa.array([None] * len(chunk), pa.string()),
                HASH: [f"h{start + i}" for i in range(len(chunk))],
                vectors_column("v"): [m.tobytes() for m in chunk],
                count_column("v"): pa.array([len(m) for m in chunk], pa.int32()),
            })
        )  # fmt: skip
    return blocks


def sink_config(engine: str, where: Path, shape: Shape) -> SinkConfig:
    if engine == "edge":
        return SinkConfig(kind="edge", path=str(where), batch_size=shape.batch)
    return SinkConfig(kind="qdrant", path=str(where), collection="bench", batch_size=shape.batch)


def run_colray(engine: str, where: Path, shape: Shape, blocks: list[pa.Table]) -> float:
    cfg = sink_config(engine, where, shape)
    layout = [VectorSpec("v", shape.dim)]
    sink = open_sink(cfg, layout)
    sink.prepare()
    writer = BlockWriter(sink, cfg, layout, ["title"], "bench")
    start = time.perf_counter()
    written = sum(writer.write(block).points_written for block in blocks)
    seconds = time.perf_counter() - start
    assert written == sum(b.num_rows for b in blocks) == sink.count()
    sink.close()
    return seconds


def run_engine_api(engine: str, where: Path, shape: Shape, matrices: list[np.ndarray]) -> float:
    """The engine's bulk API on a store colray created (same layout and settings)."""
    cfg = sink_config(engine, where, shape)
    layout = [VectorSpec("v", shape.dim)]
    creator = open_sink(cfg, layout)
    creator.prepare()
    creator.close()
    ids = [point_id("bench", f"doc-{i}") for i in range(len(matrices))]
    payloads = [{"title": f"title doc-{i}"} for i in range(len(matrices))]
    if engine == "edge":
        shard = qe.EdgeShard.load(str(where), None)
        start = time.perf_counter()
        for at in range(0, len(matrices), shape.batch):
            batch = range(at, min(at + shape.batch, len(matrices)))
            shard.update(qe.UpdateOperation.upsert_points(
                [qe.Point(ids[i], {"v": matrices[i].tolist()}, payloads[i]) for i in batch]
            ))  # fmt: skip
        seconds = time.perf_counter() - start
        assert shard.count(qe.CountRequest(exact=True)) == len(matrices)
        shard.close()
        return seconds
    client = QdrantClient(path=str(where))
    start = time.perf_counter()
    client.upload_points(
        "bench",
        points=[
            models.PointStruct(id=ids[i], vector={"v": matrices[i].tolist()}, payload=payloads[i])
            for i in range(len(matrices))
        ],
        batch_size=shape.batch,
        wait=True,
    )
    seconds = time.perf_counter() - start
    assert client.count("bench", exact=True).count == len(matrices)
    client.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the point counts")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="colray-sink-bench-") as tmp:
        for engine in ("edge", "qdrant-local"):
            for shape in SHAPES:
                n = max(1, int(POINTS[engine, shape.name] * args.scale))
                matrices = make_points(shape, n, rng)
                blocks = blocks_of(shape, matrices)
                variants: dict[str, tuple[Callable[..., float], object]] = {
                    "colray": (run_colray, blocks),
                    "engine": (run_engine_api, matrices),
                }
                times: dict[str, list[float]] = {"colray": [], "engine": []}
                for repeat in range(args.repeats):  # alternate: drift hits both alike
                    order = ["colray", "engine"] if repeat % 2 == 0 else ["engine", "colray"]
                    for name in order:
                        where = Path(tmp) / f"{engine}-{name}-{repeat}"
                        run, data = variants[name]
                        times[name].append(run(engine, where, shape, data))
                        shutil.rmtree(where, ignore_errors=True)
                mb = n * shape.vectors * shape.dim * 4 / 1e6
                colray_s = statistics.median(times["colray"])
                engine_s = statistics.median(times["engine"])
                rows.append((engine, shape.name, n, mb, colray_s, engine_s))
    print(f"{'engine':<13}{'vectors':<18}{'points':>7}{'MB':>8}"
          f"{'colray pts/s':>14}{'MB/s':>8}{'engine pts/s':>14}{'MB/s':>8}{'ratio':>7}")  # fmt: skip
    ratios = []
    for engine, shape_name, n, mb, colray_s, engine_s in rows:
        ratio = engine_s / colray_s
        ratios.append(f"{engine}/{shape_name.split()[0]}={ratio:.2f}")
        print(f"{engine:<13}{shape_name:<18}{n:>7}{mb:>8.0f}{n / colray_s:>14.1f}"
              f"{mb / colray_s:>8.1f}{n / engine_s:>14.1f}{mb / engine_s:>8.1f}{ratio:>7.2f}")  # fmt: skip
    print("colray/engine_bulk_api " + " ".join(ratios))


if __name__ == "__main__":
    main()
