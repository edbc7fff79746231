"""What a read page becomes: JSON, an annotated PNG, and a searchable PDF (the page image under invisible text).

The PDF is written by hand (about forty lines of the format) rather than by a library: one JPEG image
and one standard font per page is all it needs, and the text layer puts each digit in its box, sized to it,
in text render mode 3 (invisible), so that viewers can select and search it and tools can extract it.
"""

from __future__ import annotations

import cv2
import numpy as np

from src.recognize import Line, PageResult

PDF_DPI = 150  # an image page is laid out at this resolution
HELVETICA_DIGIT_WIDTH = 0.556  # of the font size: every digit in Helvetica is this wide
HELVETICA_DIGIT_HEIGHT = 0.718  # of the font size: the height of a digit standing on the baseline


def page_json(number: int, result: PageResult) -> dict:
    """One page as JSON: lines in reading order, each with its block (column) and digits (null: not a digit)."""
    lines = [
        {"text": line.text, "block": line.block,
         "digits": [{"digit": d.digit, "confidence": d.confidence, "box": list(d.box)} for d in line.digits]}
        for line in result.lines
    ]  # fmt: skip
    return {"page": number, "rotation": result.rotation, "lines": lines}


def page_text(page_json: dict) -> str:
    """A page's text as printed: one line per line of digits, groups split by a space, empty lines left out."""
    return "\n".join(line["text"] for line in page_json["lines"] if line["text"])


def annotated(rgb: np.ndarray, lines: list[Line]) -> np.ndarray:
    """BGR uint8 [H, W, 3]: the page with a box and the digit read drawn at each mark (grey: not a digit)."""
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    thickness = max(2, int(max(rgb.shape[:2]) / 600))
    for line in lines:
        for d in line.digits:
            x, y, w, h = d.box
            colour = (150, 150, 150) if d.digit is None else (0, 170, 0) if d.confidence >= 0.9 else (0, 140, 255)
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
            if d.digit is not None:
                cv2.putText(image, str(d.digit), (x, max(0, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, h / 45, (0, 0, 230),
                            thickness)  # fmt: skip
    return image


def annotated_png(rgb: np.ndarray, lines: list[Line]) -> bytes:
    return cv2.imencode(".png", annotated(rgb, lines))[1].tobytes()


# --- searchable PDF ---------------------------------------------------------------------------------------


def text_layer(lines: list[Line], height_px: int, pt: float) -> bytes:
    """PDF content operators drawing each digit invisibly (3 Tr) over its box; `pt` points per pixel."""
    ops = ["BT", "3 Tr"]
    for line in lines:
        for d in line.digits:
            if d.digit is None:
                continue
            x, y, w, h = d.box
            size = max(h * pt / HELVETICA_DIGIT_HEIGHT, 1.0)  # the glyph fills the box: a selection shows it
            stretch = 100 * w * pt / (HELVETICA_DIGIT_WIDTH * size)
            ops.append(f"/F1 {size:.2f} Tf {stretch:.1f} Tz 1 0 0 1 {x * pt:.2f} {(height_px - y - h) * pt:.2f} Tm "
                       f"({d.digit}) Tj")  # fmt: skip
    ops.append("ET")
    return "\n".join(ops).encode()


def jpeg_bytes(rgb: np.ndarray, quality: int = 85) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return jpeg.tobytes()


def pdf_page(rgb: np.ndarray, lines: list[Line]) -> tuple[bytes, int, int, list[Line]]:
    """What the PDF keeps of a page: its JPEG and size, and its lines (not the pixels: 200 pages fit in memory)."""
    return jpeg_bytes(rgb), rgb.shape[1], rgb.shape[0], lines


def searchable_pdf(pages: list[tuple[bytes, int, int, list[Line]]]) -> bytes:
    """A PDF with one page per pdf_page(): the image, and the digits as invisible text over it."""
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    objects: list[bytes] = [b"", b"", font]
    kids = []
    pt = 72 / PDF_DPI
    for image, w, h, lines in pages:
        objects.append(b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB "
                       b"/BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n" % (w, h, len(image))
                       + image + b"\nendstream")  # fmt: skip
        image_ref = len(objects)
        content = b"q %.2f 0 0 %.2f 0 0 cm /Im0 Do Q\n" % (w * pt, h * pt) + text_layer(lines, h, pt)
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %.2f %.2f] /Contents %d 0 R "
                       b"/Resources << /Font << /F1 3 0 R >> /XObject << /Im0 %d 0 R >> >> >>"
                       % (w * pt, h * pt, len(objects), image_ref))  # fmt: skip
        kids.append(len(objects))
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    return pdf_file(objects)


def pdf_file(objects: list[bytes]) -> bytes:
    """The bytes of a PDF whose object k (from 1) is objects[k - 1], with its cross-reference table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
