"""Documents and pages: the CPU stages against the raw libraries doing the same work, per core.

- Render: pypdfium2 alone (open, draw each page straight onto the grid ColQwen2's pixel budget
  gives) against colray's split + render stages on Ray, on the same PDFs; and, for scale,
  pypdfium2's `render` at the budget's scale plus PIL's resize to the grid.
- Decode: PIL alone (decode PNG pages, EXIF, RGB, resize to the budget) against colray's decode
  stage on Ray, on the same images.
- A whole PDF job (split, render, embed with a tiny ColQwen2, write to Edge).

Per core: the raw side runs in this process on one core; the stage runs its tasks one at a
time (each asks for every core), and its time per page is what its tasks spent on each page
(the stage-seconds columns the production code writes), so their ratio is work per page on
one core. Then the stage runs on all cores, one task per core, for the end-to-end pages/s of
the pipeline up to that stage on this machine, printed beside it.

    uv run --group bench python benchmarks/documents.py [--pages 400]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))

import colray  # noqa: E402
from colray.config import load_settings  # noqa: E402
from colray.embed.colpali import ImageGeometry  # noqa: E402
from colray.pipeline import ensure_ray  # noqa: E402
from colray.render import render_scale  # noqa: E402

# ColQwen2's processor: 28-pixel merged patches, at most 768 of them (~602k pixels).
COLQWEN2 = ImageGeometry("qwen", factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 768)
PAGE_TEXT = "Quarterly figures for the northern region, with the totals on the next page. " * 6


def make_pdfs(root: Path, documents: int, pages_each: int) -> list[Path]:
    from pdf_data import LETTER, make_pdf

    root.mkdir(parents=True)
    paths = []
    for d in range(documents):
        path = root / f"doc-{d:03d}.pdf"
        path.write_bytes(make_pdf([(PAGE_TEXT, LETTER)] * pages_each, seed=d))
        paths.append(path)
    return paths


def raw_render(paths: list[Path], resize: bool = False) -> tuple[int, float, float]:
    """Pages, seconds and CPU seconds of pypdfium2 drawing every page straight onto ColQwen2's
    grid (packed RGB), one process; with `resize`, the way pypdfium2's `render` offers:
    render at the budget's scale, then resize to the grid with PIL."""
    import math

    import pypdfium2 as pdfium
    import pypdfium2.raw as pdfium_c
    from PIL import Image

    pages, start, cpu = 0, time.perf_counter(), time.process_time()
    for path in paths:
        document = pdfium.PdfDocument(str(path))
        for index in range(len(document)):
            page = document[index]
            width, height = page.get_size()
            scale = render_scale(COLQWEN2, width, height, None)
            if resize:
                image = page.render(scale=scale).to_pil()
                image = image.convert("RGB").resize(
                    COLQWEN2.target_size(*image.size), Image.Resampling.BICUBIC
                )
                image.tobytes()
            else:
                w, h = COLQWEN2.target_size(math.ceil(width * scale), math.ceil(height * scale))
                bitmap = pdfium.PdfBitmap.new_native(w, h, pdfium_c.FPDFBitmap_BGR,
                                                     rev_byteorder=True)  # fmt: skip
                bitmap.fill_rect((255, 255, 255, 255), 0, 0, w, h)
                flags = pdfium_c.FPDF_ANNOT | pdfium_c.FPDF_REVERSE_BYTE_ORDER
                pdfium_c.FPDF_RenderPageBitmap(bitmap, page, 0, 0, w, h, 0, flags)
                bytes(bitmap.buffer)
                bitmap.close()
            page.close()
            pages += 1
        document.close()
    return pages, time.perf_counter() - start, time.process_time() - cpu


def make_images(pages: int) -> list[bytes]:
    """Page-like PNGs (600-1300 px), as the image benchmark uses."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    images = []
    for i in range(pages):
        width, height = int(rng.integers(600, 1000)), int(rng.integers(800, 1300))
        image = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(image)
        for line in range(0, height, 24):
            draw.text((20, line), f"line {line} of page {i}: figures and totals", fill="black")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def raw_decode(images: list[bytes]) -> tuple[int, float, float]:
    from PIL import Image, ImageOps

    start, cpu = time.perf_counter(), time.process_time()
    for data in images:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        image.resize(COLQWEN2.target_size(*image.size), Image.Resampling.BICUBIC).tobytes()
    return len(images), time.perf_counter() - start, time.process_time() - cpu


# Ray's own processes among the raylet's children: the dashboard's agents and Ray Data's
# bookkeeping actors, which a run also keeps busy but which run no stage's code.
RAY_SERVICES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::_")


def workers_cpu_s() -> tuple[float, float]:
    """CPU seconds so far of this Ray node's task workers (the raylet's `ray::...` children
    that run tasks and actors) and of Ray's service processes beside them: work per page
    that Ray's scheduling (workers run at nice 15) or a busy machine cannot inflate, as wall
    time inside a task is."""
    import psutil
    import ray

    (raylet,) = ray._private.worker._global_node.all_processes["raylet"]
    tasks = services = 0.0
    for proc in psutil.Process(raylet.process.pid).children(recursive=True):
        try:
            title = (proc.cmdline() or [""])[0]
            if title.startswith("ray::"):
                times = proc.cpu_times()
                spent = times.user + times.system
                if title.startswith(RAY_SERVICES):
                    services += spent
                else:
                    tasks += spent
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return tasks, services


def stage_only(settings, stage: str) -> tuple[int, float, float, float, float]:
    """Pages, seconds of the stage per page summed over its tasks, the run's wall time, and
    the CPU seconds its task workers and Ray's service processes spent: the pipeline up to
    the CPU stage (read tasks included), its output counted and dropped."""
    import ray

    from colray.job import prepare_job
    from colray.plan import page_stages, ray_data_context
    from colray.rows import DECODE_SECONDS, RENDER_SECONDS, SPLIT_SECONDS
    from colray.sources import SkipRules, read_dataset

    job = prepare_job(settings)
    start, (cpu, services) = time.perf_counter(), workers_cpu_s()
    with ray_data_context(settings.run):
        dataset = read_dataset(job.source, SkipRules())
        if stage == "render":
            dataset = page_stages(dataset, job, SkipRules())
            columns = [SPLIT_SECONDS, RENDER_SECONDS]
        else:
            from colray.decode import decode_images

            dataset = dataset.map_batches(
                decode_images, batch_format="pyarrow", batch_size=16,
                compute=ray.data.TaskPoolStrategy(), num_cpus=settings.image.decode_cpus,
                fn_kwargs={"image_column": "image", "geometry": job.image_model.geometry,
                           "max_pixels": 10**8},
            )  # fmt: skip
            columns = [DECODE_SECONDS]
        seconds, pages = 0.0, 0
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            pages += batch.num_rows
            seconds += sum(float(pa.compute.sum(batch.column(c)).as_py() or 0) for c in columns)
    tasks_after, services_after = workers_cpu_s()
    return (pages, seconds, time.perf_counter() - start, tasks_after - cpu,
            services_after - services)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=400)
    parser.add_argument("--rows-per-call", type=int, default=8,
                        help="image.rows_per_call: pages per render or decode task")  # fmt: skip
    parser.add_argument("--no-job", action="store_true", help="leave out the whole PDF job")
    args = parser.parse_args()
    from tiny_vision_models import build_tiny_colqwen2

    work = Path(tempfile.mkdtemp(prefix="colray-documents-"))
    model = build_tiny_colqwen2(work / "model")
    _save_budget(model)
    paths = make_pdfs(work / "pdfs", args.pages // 20, 20)
    images = make_images(args.pages)
    pq.write_table(pa.table({"image": pa.array(images, pa.binary())}), work / "images.parquet")
    base = {"image": {"model": str(model), "decode_cpus": 1.0, "rows_per_call": args.rows_per_call,
                      "cpus_per_actor": 1.0, "batch_size": 8},
            "sink": {"kind": "edge", "path": str(work / "store")},
            "run": {"dir": str(work / "runs"), "progress": False, "executor": "ray"}}  # fmt: skip
    pdf_settings = load_settings(
        None, base={**base, "source": {"path": str(work / "pdfs"), "format": "pdf"}}
    )
    image_settings = load_settings(None, base={**base, "source": {"path": str(work / "images.parquet"),
                                                                 "image_column": "image"}})  # fmt: skip
    ensure_ray(pdf_settings)
    raw_render(paths[:1]), raw_decode(images[:10])  # imports and first-call costs, once
    rows = []
    # Per core: the stage's tasks one at a time (each asks for every core), as the raw loop
    # runs on one; then on all cores (one per task), for the pages/s this machine gives.
    one_at_a_time = {"decode_cpus": float(os.cpu_count() or 1)}
    for name, stage, settings, raw in [
        ("render (split + render)", "render", pdf_settings, lambda: raw_render(paths)),
        ("decode", "decode", image_settings, lambda: raw_decode(images)),
    ]:
        pages, seconds, raw_cpu = raw()
        alone = settings.model_copy(
            update={"image": settings.image.model_copy(update=one_at_a_time)}
        )
        stage_only(alone, stage)  # the workers started and warm: what follows is per page
        stage_pages, stage_s, _, stage_cpu, services_cpu = stage_only(alone, stage)
        wide_pages, _, wall, _, _ = stage_only(settings, stage)
        rows.append((name, pages / seconds, stage_pages / stage_s, wide_pages / wall,
                     pages / raw_cpu, stage_pages / stage_cpu,
                     1000 * services_cpu / stage_pages))  # fmt: skip
    pages, seconds, cpu = raw_render(paths, resize=True)
    resized = (pages / seconds, pages / cpu)
    report = None if args.no_job else colray.ingest(pdf_settings)
    print("\n| stage | raw library pages/s (1 core) | colray stage pages/s per core | ratio | "
          "raw pages per CPU second | stage pages per task-worker CPU second | ratio | "
          "Ray's services, CPU ms per page | pipeline to the stage, pages/s on this machine |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    ratios = []
    for name, raw_rate, stage_rate, wall_rate, raw_per_cpu, stage_per_cpu, services in rows:
        print(f"| {name} | {raw_rate:.1f} | {stage_rate:.1f} | {stage_rate / raw_rate:.2f} | "
              f"{raw_per_cpu:.1f} | {stage_per_cpu:.1f} | {stage_per_cpu / raw_per_cpu:.2f} | "
              f"{services:.1f} | {wall_rate:.1f} |")  # fmt: skip
        ratios.append(f"{name.split()[0]}_stage/raw={stage_rate / raw_rate:.2f}")
        ratios.append(f"{name.split()[0]}_cpu/raw={stage_per_cpu / raw_per_cpu:.2f}")
    print(
        f"\npypdfium2 render(scale) + PIL resize to the grid, 1 core: {resized[0]:.1f} "
        f"pages/s, {resized[1]:.1f} pages per CPU second (drawing at the grid: "
        f"{rows[0][1] / resized[0]:.1f}x as fast)"
    )
    if report is not None:
        print(f"\nwhole PDF job (split, render, tiny ColQwen2, Edge): {report.points_written} "
              f"pages in {report.duration_s:.1f}s = "
              f"{report.points_written / report.duration_s:.1f} pages/s; "
              f"stages_s {report.stages_s}")  # fmt: skip
    print(" ".join(ratios))
    shutil.rmtree(work, ignore_errors=True)


def _save_budget(model: Path) -> None:
    """The tiny model's processor, given ColQwen2's real pixel budget, so pages render at the
    size a real job renders them."""
    import json

    for name in ("preprocessor_config.json", "processor_config.json"):
        path = model / name
        if not path.is_file():
            continue
        config = json.loads(path.read_text())
        target = config.get("image_processor", config)
        target["max_pixels"] = COLQWEN2.max_pixels
        if isinstance(target.get("size"), dict):
            target["size"]["longest_edge"] = COLQWEN2.max_pixels
        path.write_text(json.dumps(config))


if __name__ == "__main__":
    main()
