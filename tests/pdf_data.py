"""PDFs for tests, made with pypdfium2: pages with a text layer, scanned-looking pages (an image,
no text), two page sizes, and every kind of hostile document."""

from __future__ import annotations

import ctypes
import io
from pathlib import Path

import numpy as np

LETTER = (612.0, 792.0)
A5_LANDSCAPE = (595.0, 420.0)

# The pages of the report and the manual: text (None: a scan with no text layer), and size.
REPORT = [
    ("The quarterly report shows revenue growth in every region.", LETTER),
    (None, LETTER),
    ("Table 2 lists the invoice number, the date and the total amount due.", LETTER),
]
MANUAL = [
    ("Scanned pages of a technical manual describe how to replace the filter.", A5_LANDSCAPE),
    ("Contact information, opening hours and the address of the office.", A5_LANDSCAPE),
]


def _add_text(document, page, text: str, x: float, y: float, size: float = 14) -> None:
    import pypdfium2.raw as raw

    obj = raw.FPDFPageObj_NewTextObj(document.raw, b"Helvetica", ctypes.c_float(size))
    wide = ctypes.create_string_buffer((text + "\0").encode("utf-16-le"))
    raw.FPDFText_SetText(obj, ctypes.cast(wide, ctypes.POINTER(raw.FPDF_WCHAR)))
    raw.FPDFPageObj_Transform(obj, 1, 0, 0, 1, x, y)
    raw.FPDFPage_InsertObject(page.raw, obj)


def _add_picture(document, page, width: float, height: float, seed: int) -> None:
    import pypdfium2 as pdfium
    from PIL import Image

    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    image = pdfium.PdfImage.new(document)
    image.set_bitmap(pdfium.PdfBitmap.from_pil(picture))
    image.set_matrix(
        pdfium.PdfMatrix().scale(width * 0.6, height * 0.3).translate(width * 0.2, height * 0.1)
    )
    page.insert_obj(image)


def make_pdf(pages: list[tuple[str | None, tuple[float, float]]], seed: int = 0) -> bytes:
    """One page per entry: its text (a line near the top) or None for a scan, and a picture."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument.new()
    for number, (text, (width, height)) in enumerate(pages):
        page = document.new_page(width, height)
        if text is not None:
            _add_text(document, page, text, 36, height - 72)
        _add_picture(document, page, width, height, seed * 100 + number)
        page.gen_content()
    buffer = io.BytesIO()
    document.save(buffer)
    document.close()
    return buffer.getvalue()


def encrypted_pdf() -> bytes:
    """A PDF with the standard security handler whose user password is not empty: PDFium
    refuses it without the password, as any password-protected file."""
    plain = make_pdf([("secret figures", LETTER)])
    guard = b"/Encrypt<</Filter/Standard/V 1/R 2/Length 40/P -44/O<" + b"11" * 32
    guard += b">/U<" + b"22" * 32 + b">>>"
    return plain.replace(b"/Size ", guard + b"/Size ", 1)


def empty_pdf() -> bytes:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument.new()
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def damaged_pdf() -> bytes:
    """A PDF's header, then garbage where its objects and cross-references should be."""
    return b"%PDF-1.7\n" + bytes(np.random.default_rng(7).integers(0, 255, 4000, dtype=np.uint8))


def png_pretending_to_be_pdf() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), "white").save(buffer, format="PNG")
    return buffer.getvalue()


def write_pdfs(root: Path, documents: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in documents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def page_text(pdf: bytes, index: int) -> str:
    """A page's text layer as PDFium extracts it, spaces normalised (what colray embeds)."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    textpage = document[index].get_textpage()
    text = " ".join(textpage.get_text_bounded().split())
    textpage.close()
    document.close()
    return text
