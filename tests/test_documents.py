"""PDF documents: one point per page with its payload, page vectors of the rendered page and text
vectors of its text layer in the same point, hostile documents dead-lettered with their reasons,
and a killed run that resumes page by page."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pypdfium2 as pdfium
import pytest

import colray
from colray.config import load_settings
from colray.embed import load_embedder
from colray.embed.colpali import ColPaliFamilyEmbedder
from colray.job import prepare_job
from colray.render import draw_page, render_scale
from colray.sink import open_sink
from faults import kill_midway_then_rerun
from pdf_data import (
    LETTER,
    MANUAL,
    REPORT,
    damaged_pdf,
    empty_pdf,
    encrypted_pdf,
    make_pdf,
    page_text,
    png_pretending_to_be_pdf,
    write_pdfs,
)

ENGINES = {
    "edge": lambda tmp: {"kind": "edge", "path": str(tmp / "edge")},
    "qdrant-local": lambda tmp: {"kind": "qdrant", "path": str(tmp / "local"), "collection": "p"},
}


@pytest.fixture(scope="module")
def pdfs(tmp_path_factory) -> dict[str, bytes]:
    return {"report.pdf": make_pdf(REPORT, seed=1), "manuals/manual.pdf": make_pdf(MANUAL, seed=2)}


def settings_for(tmp_path, source: dict, sink: dict, model: Path, onnx_cache: str, **image):
    return load_settings(
        None,
        base={
            "source": source,
            "embed": {"model": "minilm-token", "cache_dir": onnx_cache, "rows_per_call": 4,
                      "cpus_per_actor": 0.5},
            "image": {"model": str(model), "batch_size": 2, "rows_per_call": 2,
                      "cpus_per_actor": 0.5, "decode_cpus": 0.5, **image},
            "sink": sink,
            "run": {"dir": str(tmp_path / "runs"), "progress": False, "max_failed_fraction": 1},
        },
    )  # fmt: skip


def drawn_at_grid(page, geometry, scale: float) -> object:
    """The page as the model should see it: drawn by PDFium straight onto the grid the model
    resizes a render at `scale` to, through a BGRx bitmap and PIL (colray draws packed RGB)."""
    width, height = page.get_size()
    w, h = geometry.target_size(math.ceil(width * scale), math.ceil(height * scale))
    bitmap = pdfium.PdfBitmap.new_native(w, h, pdfium.raw.FPDFBitmap_BGRx)
    bitmap.fill_rect((255, 255, 255, 255), 0, 0, w, h)
    pdfium.raw.FPDF_RenderPageBitmap(bitmap, page, 0, 0, w, h, 0, pdfium.raw.FPDF_ANNOT)
    return bitmap.to_pil().convert("RGB")


def rendered(pdf: bytes, index: int, geometry) -> object:
    page = pdfium.PdfDocument(pdf)[index]
    width, height = page.get_size()
    return drawn_at_grid(page, geometry, render_scale(geometry, width, height, None))


def test_drawing_at_the_grid_looks_like_rendering_then_resizing(pdfs, vision_models):
    """The render stage draws each page once, at the model's grid: that picture is the
    reference's, byte for byte, and pypdfium2's render at the scale plus a bicubic resize to
    the grid gives the same up to resampling: the same size, a few levels apart on average."""
    from PIL import Image

    from colray.embed.colpali import ImageGeometry, describe_image_model

    geometries = {name: describe_image_model(str(vision_models[name])).geometry
                  for name in ("colqwen2", "colpali")}  # fmt: skip
    # And at a real model's size: ColQwen2's 768 merged 28-pixel patches, ColPali's 448x448.
    geometries["ColQwen2"] = ImageGeometry("qwen", 28, 56 * 56, 28 * 28 * 768)
    geometries["ColPali"] = ImageGeometry("fixed", height=448, width=448)
    for name, geometry in geometries.items():
        for pdf in pdfs.values():
            document = pdfium.PdfDocument(pdf)
            for index in range(len(document)):
                page = document[index]
                width, height = page.get_size()
                scale = render_scale(geometry, width, height, None)
                image = page.render(scale=scale).to_pil().convert("RGB")
                resized = image.resize(geometry.target_size(*image.size),
                                       Image.Resampling.BICUBIC)  # fmt: skip
                reference = drawn_at_grid(page, geometry, scale)
                assert reference.size == resized.size, name
                w, h = reference.size
                paper = bytearray(b"\xff" * (w * h * 3))
                draw_page(page, w, h, into=paper)
                drawn = np.frombuffer(paper, np.uint8).reshape(h, w, 3)
                np.testing.assert_array_equal(drawn, np.asarray(reference))  # RGB, unpadded
                diff = np.abs(drawn.astype(np.int16) - np.asarray(resized, np.int16))
                # measured: 1.7-5.0 levels of 255 (the most at the tiny models' 84x112 grid)
                assert diff.mean() < 6, (name, index, diff.mean())


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_page_is_a_point_with_its_page_and_text_vectors(
    engine, ray_session, tmp_path, pdfs, vision_models, onnx_cache, monkeypatch
):
    # Edge on Ray; the other engine in this process (the engine's part is the same either way).
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "ray" if engine == "edge" else "local")
    root = write_pdfs(tmp_path / "pdfs", pdfs)
    source = {"path": str(root), "format": "pdf", "page_text": True, "name": "docs"}
    settings = settings_for(tmp_path, source, ENGINES[engine](tmp_path), vision_models["colqwen2"],
                            onnx_cache)  # fmt: skip
    report = colray.ingest(settings)
    assert report.documents_in_source == report.documents_read == 2
    assert report.rows_in_source == report.rows_read == report.points_written == 5
    assert report.dead_lettered == 0 and {"split", "render"} <= set(report.stages_s)

    job = prepare_job(settings)
    store = open_sink(settings.sink, job.layout)
    store.open_for_reading()
    points = {(h.payload["document"], h.payload["page"]): h for h in store.retrieve_all()}
    store.close()
    assert set(points) == {("report.pdf", 1), ("report.pdf", 2), ("report.pdf", 3),
                           ("manuals/manual.pdf", 1), ("manuals/manual.pdf", 2)}  # fmt: skip
    text_model = load_embedder(settings.embed)
    page_model = ColPaliFamilyEmbedder(job.image_model, settings.image)
    for (document, page), point in points.items():
        assert point.payload["page_count"] == (3 if document == "report.pdf" else 2)
        assert point.payload["_colray"]["key"] == f"{document}#page={page}"
        assert point.payload["_colray"]["location"] == f"{document}#page={page}"
        pdf = pdfs[document]
        (expected,) = page_model.embed_images([rendered(pdf, page - 1, job.image_model.geometry)])
        np.testing.assert_allclose(point.vectors["page"], expected.vectors, atol=1e-4)
        text = page_text(pdf, page - 1)
        if not text:  # the scan: a page vector only, and the payload says so
            assert "text" not in point.vectors and point.payload["_colray"]["text_layer"] is False
            continue
        assert "text_layer" not in point.payload["_colray"]
        (tokens,) = text_model.embed_documents([text])
        np.testing.assert_allclose(point.vectors["text"], tokens, atol=1e-5)
    assert points[("report.pdf", 2)].payload["_colray"]["text_layer"] is False

    # The text's two stages (MUVERA prefetch, MaxSim rerank) find the page a query quotes.
    hits = colray.search(settings, "the invoice number, the date and the total", vector="text")
    assert (hits[0].payload["document"], hits[0].payload["page"]) == ("report.pdf", 3)
    assert colray.search(settings, "replace the filter", vector="page", limit=5)

    if engine == "edge":  # ids come from the source, not the engine: one re-run shows it
        again = colray.ingest(settings)  # the same page ids: overwritten, nothing added
        assert again.points_in_store == 5 and again.points_written == 5


HOSTILE = {
    "encrypted": (encrypted_pdf(), "Encrypted", "encrypted or password-protected"),
    "damaged": (damaged_pdf(), "DamagedPdf", "PDFium cannot read it"),
    "not-a-pdf": (png_pretending_to_be_pdf(), "NotAPdf", "does not start like a PDF"),
    "empty": (empty_pdf(), "NoPages", "no pages"),
    "missing": (None, "Unreadable", "document is null"),
}


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["ray", "local"])
def test_pdfs_in_a_column_with_every_kind_of_hostile_document(
    executor, ray_session, tmp_path, vision_models, onnx_cache, monkeypatch
):
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", executor)  # split -> render -> embed, both ways
    # A long thin strip: covering ColPali's square input would take a 4.5M-pixel render.
    strip = make_pdf([("a normal first page", LETTER), ("a strip", (14400.0, 10.0))], seed=3)
    rows = [{"doc_id": "manual", "title": "the manual", "pdf": make_pdf(MANUAL)},
            {"doc_id": "strip", "title": "a poster", "pdf": strip}]  # fmt: skip
    rows += [{"doc_id": key, "title": key, "pdf": data} for key, (data, _, _) in HOSTILE.items()]
    path = tmp_path / "documents.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    source = {"path": str(path), "document_column": "pdf", "id_column": "doc_id",
              "payload_columns": ["title"]}  # fmt: skip
    settings = settings_for(tmp_path, source, ENGINES["edge"](tmp_path), vision_models["colpali"],
                            onnx_cache, max_pixels=1_000_000)  # fmt: skip
    report = colray.ingest(settings)
    assert report.executor == executor
    assert report.documents_in_source == report.documents_read == 7
    # Pages: 2 + 2, and one row for each of the 5 documents that could not be opened.
    assert report.rows_in_source == report.rows_read == 9
    assert report.points_written == 3 and report.dead_lettered == 6
    dead = {d["row_key"]: d for d in pq.read_table(report.dead_letter_path).to_pylist()}
    assert set(dead) == {*HOSTILE, "strip#page=2"}
    for key, (_, error_class, words) in HOSTILE.items():
        assert (dead[key]["stage"], dead[key]["error_class"]) == ("render", error_class), dead[key]
        assert words in dead[key]["error"], dead[key]
    strip_page = dead["strip#page=2"]
    assert (strip_page["stage"], strip_page["error_class"]) == ("render", "PageTooLarge")
    assert "more than image.max_pixels (1000000)" in strip_page["error"]
    assert strip_page["source_location"] == "documents.parquet#1#page=2"
    store = open_sink(settings.sink, prepare_job(settings).layout)
    store.open_for_reading()
    hits = store.retrieve_all(with_vectors=False)
    titles = {(h.payload["document"], h.payload["page"]): h.payload["title"] for h in hits}
    locations = {h.payload["_colray"]["location"] for h in hits}
    assert locations == {"documents.parquet#0#page=1", "documents.parquet#0#page=2",
                         "documents.parquet#1#page=1"}  # fmt: skip
    store.close()
    assert titles == {("manual", 1): "the manual", ("manual", 2): "the manual",
                      ("strip", 1): "a poster"}  # fmt: skip


@pytest.mark.slow
def test_a_long_document_is_resumed_page_by_page_after_a_kill(tmp_path, vision_models, monkeypatch):
    # In-process: page-level resume is the reader's and the ledger's work, the same on Ray
    # (where test_a_killed_driver_resumes_without_redoing_or_duplicating covers the kill), and
    # a cold Ray per run made this the suite's slowest test.
    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")
    pages = [
        (f"page {n} of a long manual about pumps and valves", (300.0, 200.0)) for n in range(160)
    ]
    root = write_pdfs(tmp_path / "pdfs", {"long.pdf": make_pdf(pages)})
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "source": {"path": str(root), "format": "pdf"},
        "image": {"model": str(vision_models["colpali"]), "batch_size": 4, "rows_per_call": 4,
                  "cpus_per_actor": 0.5, "decode_cpus": 0.5},
        "sink": {"kind": "edge", "path": str(tmp_path / "store")},
        "run": {"dir": str(tmp_path / "runs"), "progress": False},
    }))  # fmt: skip
    done, second = kill_midway_then_rerun(config, tmp_path / "runs", tmp_path / "r.json", 24)
    assert 24 <= done < 160
    assert second.returncode == 0, second.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["executor"] == "local"
    assert report["documents_read"] == 1 and report["rows_read"] == 160
    assert report["skipped_existing"] >= done and report["points_in_store"] == 160
    assert report["points_written"] + report["skipped_existing"] == 160


@pytest.mark.slow
def test_pdf_sources_of_every_shape_and_a_render_dpi_cap(
    tmp_path, pdfs, vision_models, onnx_cache, monkeypatch
):
    """A single file, a glob, an fsspec URI, and PDF bytes in a Hugging Face dataset's column
    all become the same pages; image.render_dpi caps the render below the model's budget.
    In-process: these are the reader's and the render stage's work, the same on Ray."""
    import datasets

    monkeypatch.setenv("COLRAY_RUN__EXECUTOR", "local")
    root = write_pdfs(tmp_path / "pdfs", pdfs)
    hf = tmp_path / "hf"
    datasets.Dataset.from_dict({"doc_id": list(pdfs), "pdf": list(pdfs.values())}).save_to_disk(
        str(hf)
    )
    shapes = {
        "file": ({"path": str(root / "report.pdf"), "format": "pdf"}, {"report.pdf": 3}),
        "glob": ({"path": str(root / "**" / "*.pdf"), "format": "pdf"},
                 {"report.pdf": 3, "manuals/manual.pdf": 2}),
        "uri": ({"path": root.as_uri(), "format": "pdf"},
                {"report.pdf": 3, "manuals/manual.pdf": 2}),
        "hf column": ({"path": str(hf), "format": "hf", "document_column": "pdf",
                       "id_column": "doc_id"}, {"report.pdf": 3, "manuals/manual.pdf": 2}),
    }  # fmt: skip
    model = vision_models["colqwen2"]
    for name, (source, pages) in shapes.items():
        out = tmp_path / name
        settings = settings_for(out, {**source, "name": "docs"}, ENGINES["edge"](out), model,
                                onnx_cache)  # fmt: skip
        report = colray.ingest(settings)
        assert report.executor == "local" and report.dead_lettered == 0, name
        assert report.documents_read == len(pages), name
        assert report.points_in_store == sum(pages.values()), name
        store = open_sink(settings.sink, prepare_job(settings).layout)
        store.open_for_reading()
        found = {(h.payload["document"], h.payload["page"], h.payload["page_count"])
                 for h in store.retrieve_all(with_vectors=False)}  # fmt: skip
        store.close()
        assert found == {(d, p, n) for d, n in pages.items() for p in range(1, n + 1)}, name

    # render_dpi: 8 DPI is below the tiny ColQwen2's budget (11.6 DPI on a letter page, an
    # 84x112 grid), so the page is drawn on the smaller grid a render at 8 DPI fits to
    # (56x84): fewer patches, and the vectors are those of the page drawn on that grid.
    capped_dir = tmp_path / "dpi"
    capped = settings_for(capped_dir, {"path": str(root / "report.pdf"), "format": "pdf",
                                       "name": "docs"}, ENGINES["edge"](capped_dir), model,
                          onnx_cache, render_dpi=8)  # fmt: skip
    assert colray.ingest(capped).points_in_store == 3
    job = prepare_job(capped)
    store = open_sink(capped.sink, job.layout)
    store.open_for_reading()
    first = next(h for h in store.retrieve_all() if h.payload["page"] == 1)
    store.close()
    full = open_sink(settings_for(tmp_path / "file", {"path": "x", "format": "pdf"},
                                  ENGINES["edge"](tmp_path / "file"), model,
                                  onnx_cache).sink, job.layout)  # fmt: skip
    full.open_for_reading()
    uncapped = next(h for h in full.retrieve_all() if h.payload["page"] == 1)
    full.close()
    capped_page, full_page = np.asarray(first.vectors["page"]), np.asarray(uncapped.vectors["page"])
    assert capped_page.shape[0] < full_page.shape[0]
    page = pdfium.PdfDocument(pdfs["report.pdf"])[0]
    width, height = page.get_size()
    assert render_scale(job.image_model.geometry, width, height, 8) == pytest.approx(8 / 72)
    image = drawn_at_grid(page, job.image_model.geometry, 8 / 72)
    (expected,) = ColPaliFamilyEmbedder(job.image_model, capped.image).embed_images([image])
    np.testing.assert_allclose(first.vectors["page"], expected.vectors, atol=1e-4)


def test_a_page_pdfium_fails_to_draw_is_that_page_only(tmp_path, pdfs, vision_models, monkeypatch):
    """The render stage draws a task's pages into one buffer: a page refused before drawing
    and a page whose drawing fails get their reasons, and every other page keeps exactly its
    own pixels (the slices stay aligned)."""
    import colray.render as render
    from colray.plan import page_steps
    from colray.rows import ERROR, HEIGHT, PIXELS, WIDTH
    from colray.sources import SkipRules, read_pieces

    root = write_pdfs(tmp_path / "pdfs", pdfs)
    settings = settings_for(tmp_path, {"path": str(root), "format": "pdf"},
                            ENGINES["edge"](tmp_path), vision_models["colqwen2"], "unused")  # fmt: skip
    job = prepare_job(settings)
    split, draw = page_steps(job, SkipRules())
    pages = pa.concat_tables(
        part for block in read_pieces(job.source, job.source.pieces, SkipRules())
        for part in split.fn(block, **split.kwargs)
    )  # fmt: skip
    assert pages.num_rows == 5
    drawn = draw.fn(pages, **draw.kwargs)
    assert drawn.column(ERROR).null_count == 5
    real_draw, calls = render.draw_page, []

    def failing_second(page, width, height, into):
        calls.append(width)
        if len(calls) == 2:
            raise RuntimeError("PDFium could not draw this page")
        real_draw(page, width, height, into)

    monkeypatch.setattr(render, "draw_page", failing_second)
    # The first page failed before drawing, the third fails while PDFium draws it.
    errors = pages.column(ERROR).to_pylist()
    errors[0] = "render: PageTooLarge: refused for the test"
    column = pages.schema.get_field_index(ERROR)
    out = draw.fn(pages.set_column(column, ERROR, pa.array(errors, pa.string())), **draw.kwargs)
    assert len(calls) == 4
    reasons = out.column(ERROR).to_pylist()
    assert reasons[0] == errors[0] and reasons[2].startswith("render: RenderFailed: RuntimeError")
    assert [r is None for r in reasons] == [False, True, False, True, True]
    pixels = out.column(PIXELS).to_pylist()
    assert pixels[0] is None and pixels[2] is None
    for i in (1, 3, 4):
        assert pixels[i] == drawn.column(PIXELS)[i].as_py(), i
        assert out.column(WIDTH)[i].as_py() == drawn.column(WIDTH)[i].as_py()
        assert out.column(HEIGHT)[i].as_py() == drawn.column(HEIGHT)[i].as_py()
    assert out.column(WIDTH)[2].as_py() == out.column(HEIGHT)[2].as_py() == 0
