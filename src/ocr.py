"""Read handwritten digits from photos, scans and PDFs with the kit's trained ensemble.

    python -m src.ocr FILE [FILE ...] [--model RUN_DIR] [--json] [--annotate OUT.png]

Per page: flatten the lighting (shadows, coloured paper), find ink as connected components, drop
specks, ruled lines and borders, re-join broken strokes, split touching digits, group them into lines
(top to bottom) and groups (a gap wider than a digit), normalise each digit as MNIST did (20x20 box,
centred by mass in 28x28, MNIST-like stroke width) and classify it. The page orientation
(0/90/180/270) is the one the models are most confident in.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from src.errors import DigitsError, run_cli

MAX_PIXELS = 80_000_000  # a 10,000 x 8,000 page; beyond that is not a photo of a page
WORK_SIDE = 2000  # pages are processed with their long side at most this many pixels
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


@dataclass
class Digit:
    digit: int
    confidence: float
    box: tuple[int, int, int, int]  # x, y, w, h in the page as given


@dataclass
class Line:
    digits: list[Digit]
    groups: list[int] = field(default_factory=list)  # index of the first digit of each group after the first

    @property
    def text(self) -> str:
        chars = [str(d.digit) for d in self.digits]
        for i in sorted(self.groups, reverse=True):
            chars.insert(i, " ")
        return "".join(chars)


# --- reading files -----------------------------------------------------------------------------


def read_pages(path: Path) -> list[np.ndarray]:
    """RGB uint8 [H, W, 3] per page: every page of a PDF or TIFF, one for other images."""
    if not path.is_file():
        raise DigitsError(f"{path}: no such file")
    if path.read_bytes()[:5] == b"%PDF-" or path.suffix.lower() == ".pdf":
        return read_pdf(path)
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_PIXELS:
                raise DigitsError(f"{path}: {image.width}x{image.height} is too large (limit {MAX_PIXELS:,} pixels)")
            pages = []
            for index in range(getattr(image, "n_frames", 1)):
                image.seek(index)
                pages.append(np.asarray(ImageOps.exif_transpose(image).convert("RGB")))
            return pages
    except UnidentifiedImageError:
        raise DigitsError(f"{path}: not an image (JPEG, PNG, BMP, TIFF) or PDF") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise DigitsError(f"{path}: cannot be read as an image ({error})") from None


def read_pdf(path: Path, dpi: int = 150) -> list[np.ndarray]:
    import pypdfium2 as pdfium

    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as error:
        raise DigitsError(f"{path}: not a readable PDF ({error})") from None
    try:
        return [np.asarray(page.render(scale=dpi / 72).to_pil().convert("RGB")) for page in pdf]
    finally:
        pdf.close()


# --- finding digits ----------------------------------------------------------------------------


def ink_map(rgb: np.ndarray) -> np.ndarray:
    """float32 [H, W] in 0-1: how much darker than the local paper each pixel is, in its darkest channel.

    Dividing by a blurred background removes shadows and uneven light; taking the channel with the most
    contrast keeps blue ink on yellow paper as visible as black ink on white.
    """
    image = rgb.astype(np.float32) + 1
    k = max(15, (min(rgb.shape[:2]) // 12) | 1)
    background = cv2.dilate(image, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k // 3 | 1, k // 3 | 1)))
    background = cv2.GaussianBlur(background, (k, k), 0)
    return np.clip(1 - image / background, 0, 1).max(axis=2)


def binarize(ink: np.ndarray) -> np.ndarray:
    """bool [H, W]: Otsu's threshold on the ink map, never below a floor that keeps paper texture out."""
    scaled = (ink * 255).astype(np.uint8)
    threshold, _ = cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return scaled > max(threshold, 40)


def components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """(x, y, w, h, area) of each 8-connected blob, with specks, lines and borders dropped."""
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    boxes = [tuple(int(v) for v in stats[i]) for i in range(1, n)]
    if not boxes:
        return []
    height, width = mask.shape
    tall = [b for b in boxes if b[3] >= 8 and b[4] >= 20]
    if not tall:
        return []
    typical = float(np.median([b[3] for b in tall]))  # the typical digit height
    kept = []
    for x, y, w, h, area in boxes:
        if h < 0.3 * typical and w < 0.3 * typical:
            continue  # speck
        if w > 6 * h or h > 6 * max(w, 1) and h > 3 * typical:
            continue  # ruled line or a long stroke that is no digit
        if (
            w > 0.5 * width
            or h > 0.5 * height
            or (x == 0 or y == 0 or x + w == width or y + h == height)
            and (w > 3 * typical or h > 3 * typical)
        ):
            continue  # page border or the table's edge
        if area < 0.02 * w * h and max(w, h) > 2 * typical:
            continue  # a thin frame around something
        kept.append((x, y, w, h, area))
    return kept


def merge_broken(boxes: list[tuple[int, int, int, int, int]], typical: float) -> list[tuple[int, int, int, int]]:
    """Join pieces of one digit: boxes that overlap horizontally and lie within a fraction of a digit vertically."""
    boxes = sorted(((x, y, w, h) for x, y, w, h, _ in boxes), key=lambda b: b[0])
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                overlap = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
                gap = max(a[1], b[1]) - min(a[1] + a[3], b[1] + b[3])
                x, y = min(a[0], b[0]), min(a[1], b[1])
                w, h = max(a[0] + a[2], b[0] + b[2]) - x, max(a[1] + a[3], b[1] + b[3]) - y
                if overlap > 0.5 * min(a[2], b[2]) and gap < 0.25 * typical and h < 1.5 * typical:
                    boxes[i] = (x, y, w, h)
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return attach_fragments(boxes, typical)


def box_distance(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    dx = max(0, max(a[0], b[0]) - min(a[0] + a[2], b[0] + b[2]))
    dy = max(0, max(a[1], b[1]) - min(a[1] + a[3], b[1] + b[3]))
    return float(np.hypot(dx, dy))


def attach_fragments(boxes: list[tuple[int, int, int, int]], typical: float) -> list[tuple[int, int, int, int]]:
    """Join short pieces (a broken-off bar of a 7 or 5) to the nearest full-height box when they nearly touch."""
    full = [b for b in boxes if b[3] >= 0.6 * typical]
    result = list(full)
    for piece in (b for b in boxes if b[3] < 0.6 * typical):
        nearest = min(range(len(result)), key=lambda i: box_distance(piece, result[i]), default=None)
        if nearest is None or box_distance(piece, result[nearest]) > 0.2 * typical:
            result.append(piece)
            continue
        a = result[nearest]
        x, y = min(a[0], piece[0]), min(a[1], piece[1])
        result[nearest] = (x, y, max(a[0] + a[2], piece[0] + piece[2]) - x, max(a[1] + a[3], piece[1] + piece[3]) - y)
    return sorted(result, key=lambda b: b[0])


def split_touching(
    box: tuple[int, int, int, int], mask: np.ndarray, typical_width: float
) -> list[tuple[int, int, int, int]]:
    """Cut a box holding several touching digits at the columns with the least ink.

    A box counts as several digits only when it is much wider than the page's typical digit: slanted
    or wide single digits (a 7 with a long bar) stay whole.
    """
    x, y, w, h = box
    count = int(round(w / typical_width))
    if w < 1.4 * typical_width or count < 2:
        return [box]
    profile = mask[y : y + h, x : x + w].sum(axis=0).astype(float)
    cuts = []
    for k in range(1, count):
        centre = int(k * w / count)
        lo, hi = max(1, centre - w // (3 * count)), min(w - 1, centre + w // (3 * count))
        cuts.append(lo + int(np.argmin(profile[lo:hi])) if hi > lo else centre)
    edges = [0, *cuts, w]
    pieces = []
    for a, b in zip(edges, edges[1:]):
        rows = np.flatnonzero(mask[y : y + h, x + a : x + b].any(axis=1))
        if len(rows) and b > a:
            pieces.append((x + a, y + int(rows[0]), b - a, int(rows[-1] - rows[0] + 1)))
    return pieces


def group_lines(boxes: list[tuple[int, int, int, int]]) -> list[list[tuple[int, int, int, int]]]:
    """Boxes grouped into lines, top to bottom, each left to right.

    A box joins the line whose running vertical centre is nearest, if within half a digit height: long
    descenders reaching into the next line still belong to their own line by their centre.
    """
    if not boxes:
        return []
    typical = float(np.median([b[3] for b in boxes]))
    lines: list[list[tuple[int, int, int, int]]] = []
    for box in sorted(boxes, key=lambda b: b[1] + b[3] / 2):
        centre = box[1] + box[3] / 2
        best = min(lines, key=lambda line: abs(line_centre(line) - centre), default=None)
        if best is not None and abs(line_centre(best) - centre) < 0.5 * typical:
            best.append(box)
        else:
            lines.append([box])
    return [sorted(line, key=lambda b: b[0]) for line in sorted(lines, key=line_centre)]


def line_centre(line: list[tuple[int, int, int, int]]) -> float:
    return float(np.median([b[1] + b[3] / 2 for b in line]))


# --- MNIST normalisation -----------------------------------------------------------------------


def normalize_digit(ink: np.ndarray) -> np.ndarray:
    """uint8 [28, 28] from a crop of the ink map: 20x20 box keeping aspect ratio, centred by mass, MNIST strokes."""
    crop = ink.astype(np.float32)
    rows, cols = np.flatnonzero(crop.max(1) > 0.1), np.flatnonzero(crop.max(0) > 0.1)
    if len(rows) == 0 or len(cols) == 0:
        return np.zeros((28, 28), np.uint8)
    crop = crop[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    crop = normalize_stroke(crop)
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - small.shape[0]) // 2, (28 - small.shape[1]) // 2
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    total = canvas.sum()
    if total > 0:  # shift the centre of mass to the centre, as MNIST did
        ys, xs = np.indices(canvas.shape)
        dy, dx = 14 - (ys * canvas).sum() / total, 14 - (xs * canvas).sum() / total
        canvas = cv2.warpAffine(canvas, np.float32([[1, 0, dx], [0, 1, dy]]), (28, 28))
    canvas = canvas / max(canvas.max(), 1e-6)
    return (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)


def normalize_stroke(crop: np.ndarray) -> np.ndarray:
    """Thicken thin pens and thin down markers so strokes are about 1/8 of the digit's height, as in MNIST."""
    mask = (crop > 0.3).astype(np.uint8)
    area = mask.sum()
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    perimeter = sum(cv2.arcLength(c, True) for c in contours)
    if area == 0 or perimeter == 0:
        return crop
    width = 2 * area / perimeter  # mean stroke width of a long thin shape
    target = max(crop.shape) / 8
    radius = int(round(abs(target - width) / 2))
    if radius == 0 or 0.7 * target <= width <= 1.4 * target:
        return crop
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(crop, kernel) if width < target else cv2.erode(crop, kernel)


# --- the reader --------------------------------------------------------------------------------


class Ensemble:
    """The fold models of a run: probs float32 [N, 10] for digits uint8 [N, 28, 28]."""

    def __init__(self, run_dir: Path, max_models: int = 5):
        import keras

        paths = sorted(run_dir.glob("seed*_fold*/model.keras"))[:max_models]
        if not paths:
            raise DigitsError(f"{run_dir}: no trained models (seed*_fold*/model.keras) in it")
        self.models = [keras.models.load_model(p) for p in paths]

    def __call__(self, digits: np.ndarray) -> np.ndarray:
        if len(digits) == 0:
            return np.zeros((0, 10), np.float32)
        x = digits[..., None]
        return np.mean([m.predict(x, batch_size=256, verbose=0) for m in self.models], axis=0)


def find_model(runs_dir: Path) -> Path:
    runs = sorted(
        (p.parent.parent for p in runs_dir.glob("*/seed*_fold*/model.keras")), key=lambda p: p.stat().st_mtime
    )
    if not runs:
        raise DigitsError(
            f"no trained model under {runs_dir}/: train one first with python -m src.submit --preset fast"
        )
    return runs[-1]


def read_page(rgb: np.ndarray, classify) -> tuple[int, list[Line]]:
    """(rotation, lines) for one page: rotation is the clockwise turn (0/90/180/270) that sets it upright,
    chosen as the one whose digits the models read with the highest mean confidence."""
    scale = min(1.0, WORK_SIDE / max(rgb.shape[:2]))
    if scale < 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ink = ink_map(rgb)
    best = (-1.0, 0, [])
    for rotation in (0, 90, 180, 270):
        turned = np.rot90(ink, k=-(rotation // 90)).copy() if rotation else ink
        lines = read_lines(turned, classify)
        confidences = [d.confidence for line in lines for d in line.digits]
        score = float(np.mean(confidences)) if confidences else 0.0
        if score > best[0] + 1e-6:
            best = (score, rotation, [unrotate(line, rotation, turned.shape, scale) for line in lines])
    return best[1], best[2]


def crop_digit(ink: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = box
    return normalize_digit(ink[y : y + h, x : x + w] * mask[y : y + h, x : x + w])


def read_lines(ink: np.ndarray, classify) -> list[Line]:
    mask = binarize(ink)
    kept = components(mask)
    if not kept:
        return []
    typical = float(np.median([b[3] for b in kept]))
    merged = [b for b in merge_broken(kept, typical) if b[3] >= 0.4 * typical]  # drop punctuation, stray marks
    if not merged:
        return []
    typical_width = float(np.median([b[2] for b in merged]))
    # A wide box is one wide digit or several touching ones: keep the reading the models are surer of.
    splits = {b: split_touching(b, mask, typical_width) for b in merged}
    candidates = list(dict.fromkeys([*merged, *(p for pieces in splits.values() if len(pieces) > 1 for p in pieces)]))
    probs = dict(zip(candidates, classify(np.stack([crop_digit(ink, mask, b) for b in candidates]))))
    boxes = []
    for box, pieces in splits.items():
        split_better = len(pieces) > 1 and np.mean([probs[p].max() for p in pieces]) > probs[box].max() + 0.05
        boxes.extend(pieces if split_better else [box])
    result = []
    for line in group_lines(boxes):
        digits = [Digit(int(probs[b].argmax()), round(float(probs[b].max()), 4), b) for b in line]
        width = max(float(np.median([b[2] for b in line])), 0.6 * typical)
        groups = [k for k in range(1, len(line)) if line[k][0] - (line[k - 1][0] + line[k - 1][2]) > width]
        result.append(Line(digits, groups))
    return result


def unrotate(line: Line, rotation: int, shape: tuple[int, int], scale: float) -> Line:
    """Map boxes found on the page turned by `rotation` back to the page as given (and its full size)."""
    h, w = shape[:2]  # of the turned page
    for d in line.digits:
        x, y, bw, bh = d.box
        if rotation == 90:  # turned clockwise: original (col, row) = (y, w - x - bw)
            x, y, bw, bh = y, w - x - bw, bh, bw
        elif rotation == 180:
            x, y = w - x - bw, h - y - bh
        elif rotation == 270:
            x, y, bw, bh = h - y - bh, x, bh, bw
        d.box = tuple(int(round(v / scale)) for v in (x, y, bw, bh))
    return line


def annotate(rgb: np.ndarray, lines: list[Line], path: Path) -> None:
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    thickness = max(2, int(max(rgb.shape[:2]) / 600))
    for line in lines:
        for d in line.digits:
            x, y, w, h = d.box
            colour = (0, 170, 0) if d.confidence >= 0.9 else (0, 140, 255)
            cv2.rectangle(image, (x, y), (x + w, y + h), colour, thickness)
            cv2.putText(
                image, str(d.digit), (x, max(0, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, h / 45, (0, 0, 230), thickness
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def read_file(path: Path, classify) -> tuple[dict, list[np.ndarray], list[list[Line]]]:
    pages = read_pages(path)
    result = {"file": str(path), "pages": []}
    all_lines = []
    for number, rgb in enumerate(pages, 1):
        rotation, lines = read_page(rgb, classify) if rgb.size else (0, [])
        all_lines.append(lines)
        result["pages"].append({
            "page": number, "rotation": rotation,
            "lines": [{"text": line.text, "digits": [{"digit": d.digit, "confidence": d.confidence, "box": list(d.box)}
                                                     for d in line.digits]} for line in lines],
        })  # fmt: skip
    return result, pages, all_lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.ocr", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--model", type=Path, help="a run folder with fold models (default: the latest under runs/)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--annotate", type=Path, metavar="OUT.png", help="save pages with boxes and digits drawn")
    args = parser.parse_args(argv)
    for path in args.files:
        if not path.is_file():
            raise DigitsError(f"{path}: no such file")
    classify = Ensemble(args.model if args.model else find_model(args.runs_dir))
    results, shot = [], 0
    for path in args.files:
        result, pages, lines = read_file(path, classify)
        results.append(result)
        if args.annotate:
            for rgb, page_lines in zip(pages, lines):
                out = args.annotate if shot == 0 else args.annotate.with_name(f"{args.annotate.stem}_{shot + 1}.png")
                annotate(rgb, page_lines, out)
                shot += 1
        if not args.json:
            for page in result["pages"]:
                if len(args.files) > 1 or len(result["pages"]) > 1:
                    print(f"# {path} page {page['page']} (rotation {page['rotation']})")
                for line in page["lines"]:
                    print(line["text"])
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def line_accuracy(predicted: list[str], expected: list[str]) -> float:
    """1 - (edit distance summed over lines) / (digits expected), comparing digits only; missing lines count whole."""
    digits = lambda s: s.replace(" ", "")  # noqa: E731
    errors = sum(edit_distance(digits(p), digits(e)) for p, e in zip(predicted, expected))
    errors += sum(len(digits(s)) for s in (expected[len(predicted) :] or predicted[len(expected) :]))
    return 1 - errors / max(1, sum(len(digits(e)) for e in expected))


if __name__ == "__main__":
    sys.exit(run_cli(main))
