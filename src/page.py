"""From a file to page images, and from a page image to its ink: the first stage of reading pages.

The paper is found through its background, estimated by a grey-level closing (a max then a min filter
wider than any pen stroke): the closing removes the ink and keeps the large shapes of the page as they
are, so the step where coloured paper meets a white PDF margin or a table, or where a hand's shadow
begins, stays a step and never becomes ink. Ink is how much darker a pixel is than that background.
Ruled lines, grids and a notebook's margin line are taken out of the ink, the digits that cross them kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from src.errors import DigitsError

MAX_PIXELS = 80_000_000  # a 10,000 x 8,000 page; beyond that is not a photo of a page
WORK_SIDE = 2000  # pages are processed with their long side at most this many pixels
BACKGROUND_SIDE = 500  # the background is estimated on a copy this size
MIN_SIDE = 16  # smaller than this is no page
PDF_DPI = 150
# A rule (a ruled line, a grid line, a margin line) is a straight mark at least this share of the page's long
# side and this many times longer than it is thick: a digit's stroke is neither (a 1 is 5-40 times its width).
RULE_LENGTH = 0.2
RULE_THINNESS = 60
RULES_SIDE = 700  # rules are looked for on a copy this size
Segment = tuple[int, int, int, int]  # x1, y1, x2, y2


# --- files -> RGB pages --------------------------------------------------------------------------------


def check_file(path: Path) -> None:
    if not path.is_file():
        raise DigitsError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DigitsError(f"{path}: empty file")


def count_pages(path: Path) -> int:
    check_file(path)
    if is_pdf(path):
        with open_pdf(path) as pdf:
            return len(pdf)

    with open_image(path) as image:
        return getattr(image, "n_frames", 1)


def iter_pages(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 [H, W, 3] for each page of a PDF or multi-page TIFF, one for other images; read lazily."""
    check_file(path)
    yield from (pdf_pages(path) if is_pdf(path) else image_pages(path))


def read_pages(path: Path) -> list[np.ndarray]:
    return list(iter_pages(path))


def is_pdf(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(5) == b"%PDF-" or path.suffix.lower() == ".pdf"


def open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise DigitsError(f"{path}: not an image (JPEG, PNG, BMP, TIFF) or PDF") from None
    except (OSError, Image.DecompressionBombError) as error:
        raise DigitsError(f"{path}: cannot be read as an image ({error})") from None
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise DigitsError(f"{path}: {image.width}x{image.height} is too large (limit {MAX_PIXELS:,} pixels)")
    return image


def image_pages(path: Path) -> Iterator[np.ndarray]:
    from PIL import Image, ImageOps

    with open_image(path) as image:
        for index in range(getattr(image, "n_frames", 1)):
            try:
                image.seek(index)
                if image.format == "JPEG":  # decode at a reduced scale straight away: 4x faster on 12 MP
                    scale = WORK_SIDE / max(image.size)
                    image.draft("RGB", (round(image.width * scale), round(image.height * scale)))
                yield np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
            except (OSError, Image.DecompressionBombError, ValueError) as error:
                raise DigitsError(f"{path}: cannot be read as an image ({error})") from None


def open_pdf(path: Path):
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as error:
        reason = "it is encrypted (password-protected)" if "password" in str(error).lower() else str(error)
        raise DigitsError(f"{path}: not a readable PDF ({reason})") from None


def pdf_pages(path: Path, dpi: int = PDF_DPI) -> Iterator[np.ndarray]:
    pdf = open_pdf(path)
    try:
        for page in pdf:
            width, height = page.get_size()
            scale = min(dpi / 72, WORK_SIDE / max(width, height, 1))
            yield np.asarray(page.render(scale=scale).to_pil().convert("RGB"))
    finally:
        pdf.close()


# --- RGB page -> ink -----------------------------------------------------------------------------------


def work_size(rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """(the page with its long side at most WORK_SIDE, the scale applied)."""
    scale = min(1.0, WORK_SIDE / max(rgb.shape[:2]))
    if scale < 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return rgb, scale


def background(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(paper brightness float32 [H, W], bool [H, W] true where ink may be: on the paper).

    Estimated on a small copy: a closing wider than a stroke removes the ink, a median smooths the grain.
    At the steps of the background (a shadow's edge, the page's edge) the small copy blurs the step, and
    the dark side would read as ink: there the paper is estimated again at full size, where a closing
    keeps the step sharp, so a digit across a shadow's edge stays whole. What is not paper is off limits
    (see paper_region).
    """
    h, w = grey.shape
    f = min(1.0, BACKGROUND_SIDE / max(h, w))
    small = cv2.resize(grey, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    k = max(5, (max(small.shape) // 30) | 1)
    paper = cv2.morphologyEx(small, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    paper = cv2.medianBlur(paper, 5)
    step = cv2.morphologyEx(paper, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)).astype(np.float32)
    at_step = cv2.dilate((step > 0.2 * np.maximum(paper, 1)).astype(np.uint8), np.ones((3, 3), np.uint8))
    allowed = paper_region(small, paper, k).astype(np.uint8)
    full = cv2.resize(paper, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    at_step = cv2.resize(at_step, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
    if at_step.any():
        side = round(k / f) | 1
        sharp = cv2.morphologyEx(grey, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (side, side)))
        full[at_step] = sharp[at_step]
    return full, cv2.resize(allowed, (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def paper_region(small: np.ndarray, paper: np.ndarray, cell: int) -> np.ndarray:
    """bool [h, w]: the paper, on the small copy. Brightness splits the page into regions (Otsu); a region on
    the border that is textured all over (in squares of `cell` pixels) is no paper but what it lies on (a
    table, a carpet).

    Smooth regions stay, bright or dark: a white PDF margin holds no ink anyway, and a hand's shadow on
    the paper may hold digits. The region under the photo's centre stays too: a photo is taken of the page,
    and a page of ruled or squared paper is as busy as a table.
    """
    level, _ = cv2.threshold(paper, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bright = paper > level
    if not bright.any() or bright.all() or paper[bright].mean() - paper[~bright].mean() < 30:
        return np.ones(paper.shape, bool)
    inkish = (1 - (small.astype(np.float32) + 1) / (paper.astype(np.float32) + 1)) > 0.12
    keep = np.ones(paper.shape, bool)
    for side in (bright, ~bright):
        _, labels = cv2.connectedComponents(side.astype(np.uint8), connectivity=4)  # 0: the other side
        on_border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        centre = labels[labels.shape[0] // 2, labels.shape[1] // 2]
        for label in on_border:
            if label not in (0, centre) and textured(inkish, labels == label, cell):
                keep &= labels != label
    return keep


def textured(inkish: np.ndarray, region: np.ndarray, cell: int, busy: float = 0.06, everywhere: float = 0.6) -> bool:
    """Whether ink-like marks cover `region` (bool [h, w]) all over: in most of its `cell`-sized squares, more
    than `busy` of the pixels. A table's grain is everywhere; a shadowed corner of the page that holds a string
    of digits is as dense in ink, but only along the string.
    """
    area, ink = cell_sums(region, cell), cell_sums(inkish & region, cell)
    cells = area >= cell * cell / 4
    if not cells.any():  # a sliver along the border: judged as a whole
        return bool(inkish[region].mean() > busy)
    return bool((ink[cells] > busy * area[cells]).mean() > everywhere)


def cell_sums(mask: np.ndarray, cell: int) -> np.ndarray:
    """int [h // cell, w // cell]: the true pixels of `mask` in each whole `cell` x `cell` square."""
    h, w = (mask.shape[0] // cell) * cell, (mask.shape[1] // cell) * cell
    return mask[:h, :w].reshape(h // cell, cell, w // cell, cell).sum(axis=(1, 3))


def ink_map(rgb: np.ndarray) -> np.ndarray:
    """float32 [H, W] in 0-1: how much darker than the paper each pixel is, in its darkest channel.

    The darkest channel keeps blue ink on yellow paper as visible as black ink on white. Only ink on
    the paper counts (see background).
    """
    grey = rgb.min(axis=2) if rgb.ndim == 3 else rgb
    paper, allowed = background(grey)
    ink = np.clip(1 - (grey.astype(np.float32) + 1) / (paper + 1), 0, 1)
    ink[~allowed] = 0
    return without_rules(ink)


def without_rules(ink: np.ndarray) -> np.ndarray:
    """float32 [H, W]: the ink with its rules taken out, horizontal ones first, then vertical ones.

    Only the part of a rule's cross-section that is as thick as the rule goes: where a digit's stroke
    crosses it, the ink is thicker there along the cross-section, and stays whole.
    """
    scaled = (ink * 255).astype(np.uint8)
    faint = scaled > 0.5 * ink_threshold(scaled)  # all of a rule, its faint stretches too
    out = ink.copy()
    horizontal, vertical = rule_segments(faint)
    if horizontal:
        rule = rule_pixels(faint, horizontal)
        out[rule] = 0
        faint &= ~rule  # a grid's crossings are then free for the vertical rules
    if vertical:  # transposed views: a vertical rule is a horizontal one
        out.T[rule_pixels(faint.T, [(y1, x1, y2, x2) for x1, y1, x2, y2 in vertical])] = 0
    return out


def rule_segments(mask: np.ndarray) -> tuple[list[Segment], list[Segment]]:
    """(the horizontal rules, the vertical ones) as (x1, y1, x2, y2) on `mask`: long thin straight marks."""
    h, w = mask.shape
    f = min(1.0, RULES_SIDE / max(h, w))
    small = cv2.resize(mask.astype(np.uint8) * 255, (max(1, round(w * f)), max(1, round(h * f))),
                       interpolation=cv2.INTER_AREA) > 64  # fmt: skip
    length = max(20, round(RULE_LENGTH * max(small.shape)))
    found = cv2.HoughLinesP(small.astype(np.uint8), 1, np.pi / 360, length, minLineLength=length,
                            maxLineGap=max(2, length // 20))  # fmt: skip
    horizontal: list[Segment] = []
    vertical: list[Segment] = []
    for x1, y1, x2, y2 in [] if found is None else (found.reshape(-1, 4) / f).round().astype(int).tolist():
        (horizontal if abs(x2 - x1) >= abs(y2 - y1) else vertical).append((x1, y1, x2, y2))
    return horizontal, vertical


def rule_pixels(mask: np.ndarray, segments: list[Segment]) -> np.ndarray:
    """bool [H, W]: the pixels of the (near-horizontal) rules `segments` that no digit's stroke crosses.

    A segment's thickness is the median height of the vertical runs of mask pixels on it: one much
    thicker for its length is a stroke, not a rule, and the rules of a page are printed alike, so the
    median rule says how thick a run of a rule may be. The runs a rule passes through that are no
    thicker go; a run where a stroke crosses is taller, and stays.
    """
    starts, columns, heights = vertical_runs(mask)
    run_at = run_ids(mask.shape, starts, columns, heights)
    height_at = np.concatenate([[0], heights])[run_at]
    fitted = [on_its_rule(height_at, segment) for segment in segments]
    rules = [(segment, t) for segment, t in fitted if t and length(segment) >= RULE_THINNESS * t]
    if not rules:
        return np.zeros(mask.shape, bool)
    max_run = int(np.median([t for _, t in rules])) + 2  # the most a rule's cross-section may measure
    seeds = np.zeros(mask.shape, np.uint8)
    for (x1, y1, x2, y2), t in rules:
        if t <= max_run:
            cv2.line(seeds, (x1, y1), (x2, y2), 1, 3)  # 3: +-1 px where the angle is a little off
    hit = np.zeros(len(heights) + 1, bool)
    hit[run_at[seeds > 0]] = True
    hit[1:] &= heights <= max_run
    hit[0] = False  # off every run
    return hit[run_at]


def length(segment: Segment) -> float:
    x1, y1, x2, y2 = segment
    return float(np.hypot(x2 - x1, y2 - y1))


def on_its_rule(height_at: np.ndarray, segment: Segment) -> tuple[Segment, int]:
    """`segment` moved onto the run it passes through, and the median height of the runs along it (0 when it
    is mostly off the mask: no rule).

    The segment was found on a smaller copy, so it may pass up to 2 pixels beside its rule: each of 64 points
    along it takes the run nearest to it, and the segment moves by their median offset.
    """
    x1, y1, x2, y2 = segment
    xs = np.clip(np.linspace(x1, x2, 64).round().astype(int), 0, height_at.shape[1] - 1)
    nearest_first = np.array([0, -1, 1, -2, 2])
    ys = np.clip(np.linspace(y1, y2, 64).round().astype(int)[:, None] + nearest_first, 0, height_at.shape[0] - 1)
    near = height_at[ys, xs[:, None]]  # [64, 5]
    first = (near > 0).argmax(axis=1)  # the nearest run, where there is one
    heights, on = near[np.arange(64), first], near.any(axis=1)
    if on.sum() <= 32:
        return segment, 0
    dy = int(np.median(nearest_first[first[on]]))
    return (x1, y1 + dy, x2, y2 + dy), int(np.median(heights[on]))


def vertical_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start row, column, height) of each vertical run of mask pixels, as int arrays."""
    steps = np.diff(np.pad(mask.astype(np.int8), ((1, 1), (0, 0))), axis=0)
    columns, starts = np.nonzero(steps.T == 1)  # column by column, so starts and ends pair up in order
    _, ends = np.nonzero(steps.T == -1)
    return starts, columns, ends - starts


def run_ids(shape: tuple[int, ...], starts: np.ndarray, columns: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """int32 [H, W]: 1 + the index of the run each pixel is in, 0 off every run."""
    ids = np.zeros(shape[:2], np.int32)
    within = np.arange(heights.sum()) - np.repeat(np.cumsum(heights) - heights, heights)  # 0, 1, .. down each run
    ids[np.repeat(starts, heights) + within, np.repeat(columns, heights)] = np.repeat(
        np.arange(1, len(heights) + 1), heights)  # fmt: skip
    return ids


def binarize(ink: np.ndarray) -> np.ndarray:
    """bool [H, W]: Otsu's threshold over the inky pixels, never below a floor that keeps paper grain out.

    Otsu runs on the pixels that are at least faintly inked: on a page that is mostly paper the
    paper's own grain would otherwise set the threshold.
    """
    scaled = (ink * 255).astype(np.uint8)
    return scaled > ink_threshold(scaled)


def ink_threshold(scaled: np.ndarray) -> float:
    """binarize's level of ink, for ink as uint8 0-255 (255 when there is too little ink to tell: nothing is ink)."""
    inked = scaled[scaled > 25]
    if inked.size < 20:
        return 255.0
    threshold, _ = cv2.threshold(inked.reshape(1, -1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(min(max(threshold * 0.8, 40), 110))
