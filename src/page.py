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
RULE_DARKER = 0.15  # ink this much darker than a page's rules is pen on a rule, and stays
ALONG = 40  # a bent rule is followed in the direction of its last this many columns
MAX_GLARE_GAIN = 4.0  # a glare that leaves less than a quarter of the ink's contrast is not undone further
GLARE_SLACK = 0.2  # see glare_gain
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
    keeps the step sharp, so a digit across a shadow's edge stays whole; the darker of the two estimates
    counts, since near a corner where three regions meet (a dark corner of a photo on a white margin) the
    closing brightens the dark one too. What is not paper is off limits (see paper_region).
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
        full[at_step] = np.minimum(full[at_step], sharp[at_step])
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
    ink = np.clip((1 - (grey.astype(np.float32) + 1) / (paper + 1)) * glare_gain(paper, allowed), 0, 1)
    ink[~allowed] = 0
    return without_rules(ink)


def glare_gain(paper: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """float32 [H, W]: how much a glare washed out the ink; 1 where the paper is not much brighter than usual.

    Glare mixes white light into the photo: paper and ink alike move a share g of the way to white, so the
    ink's contrast shrinks by (1 - g), and g shows in the paper: (1 - g) = (255 - paper) / (255 - usual paper).
    The usual paper is where its brightest fifth begins (a hand's shadow or a dim corner is no glare), and the
    gain is GLARE_SLACK less (never below 1): the light over a page varies that much by itself.
    """
    usual = float(np.percentile(paper[allowed] if allowed.any() else paper, 80))
    if usual >= 250:  # white paper has no room to show a glare
        return np.ones(paper.shape, np.float32)
    washed = (255 - paper) / (255 - usual)  # 1 - g
    gain = ((paper + 1) / (usual + 1)) / np.maximum(washed, 1 / MAX_GLARE_GAIN)
    return np.maximum(gain - GLARE_SLACK, 1).astype(np.float32)


def without_rules(ink: np.ndarray) -> np.ndarray:
    """float32 [H, W]: the ink with its rules taken out, horizontal ones first, then vertical ones.

    Only the part of a rule's cross-section that is as thick as the rule goes: where a digit's stroke
    crosses it, the ink is thicker there along the cross-section, and stays whole. Straight rules are found
    first; what is left of rules bowed by a bent page is then followed as curves (see bent_rule_pixels).
    """
    scaled = (ink * 255).astype(np.uint8)
    faint = scaled > 0.5 * ink_threshold(scaled)  # all of a rule, its faint stretches too
    out = ink.copy()
    horizontal, vertical = rule_segments(faint)
    # transposed views: a vertical rule is a horizontal one; a grid's crossings are free for the vertical
    # rules once the horizontal ones are gone
    views = ((out, faint), (out.T, faint.T))
    transposed = [(y1, x1, y2, x2) for x1, y1, x2, y2 in vertical]
    straight = []
    for (out_view, faint_view), segments in zip(views, (horizontal, transposed)):
        rule, taken = rule_pixels(faint_view, out_view, segments)
        out_view[rule], faint_view[rule] = 0, False
        straight.append(taken)
    for (out_view, faint_view), taken in zip(views, straight):
        rule = bent_rule_pixels(faint_view, out_view, RULE_LENGTH * max(faint.shape), taken)
        out_view[rule], faint_view[rule] = 0, False
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


def rule_pixels(mask: np.ndarray, ink: np.ndarray, segments: list[Segment]) -> tuple[np.ndarray, list[Segment]]:
    """(bool [H, W]: the pixels of the (near-horizontal) rules `segments` that no digit's stroke crosses, the
    segments taken for rules, moved onto their line).

    A segment's thickness is the median height of the vertical runs of mask pixels on it: one much
    thicker for its length is a stroke, not a rule, and the rules of a page are printed alike, so the
    median rule says how thick a run of a rule may be. The runs a rule passes through that are no
    thicker go; a run where a stroke crosses is taller, and stays (see runs_under for strokes along a rule).
    """
    if not segments:
        return np.zeros(mask.shape, bool), []
    run_at, heights, height_at = run_map(mask)
    fitted = [on_its_rule(height_at, segment) for segment in segments]
    rules = [(segment, t) for segment, t in fitted if t and length(segment) >= RULE_THINNESS * t]
    if not rules:
        return np.zeros(mask.shape, bool), []
    max_run = int(np.median([t for _, t in rules])) + 2  # the most a rule's cross-section may measure
    seeds = np.zeros(mask.shape, np.uint8)
    for (x1, y1, x2, y2), t in rules:
        if t <= max_run:
            cv2.line(seeds, (x1, y1), (x2, y2), 1, 3)  # 3: +-1 px where the angle is a little off
    return runs_under(seeds, run_at, heights, max_run, ink), [segment for segment, t in rules if t <= max_run]


def runs_under(seeds: np.ndarray, run_at: np.ndarray, heights: np.ndarray, max_run: int, ink: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixels of the runs (see run_ids) that `seeds` (uint8 [H, W]) passes through and that are
    at most `max_run` tall: a rule's. Pixels of them darker than the page's rules (`ink`, float [H, W]) stay: a thin
    1 written along a rule, in pen, is darker than the printed rule."""
    hit = np.zeros(len(heights) + 1, bool)
    hit[run_at[seeds > 0]] = True
    hit[1:] &= heights <= max_run
    hit[0] = False  # off every run
    rule = hit[run_at]
    return rule & (ink <= np.median(ink[rule]) + RULE_DARKER) if rule.any() else rule


def bent_rule_pixels(mask: np.ndarray, ink: np.ndarray, min_length: float, straight: list[Segment]) -> np.ndarray:
    """bool [H, W]: the pixels of near-horizontal rules that are not straight (a page photographed bent bows
    them) and that no digit's stroke crosses; `straight`: the rules rule_pixels took out (their pixels are off
    `mask`).

    A rule is a line of thin vertical runs of pixels (a stroke that crosses it is taller). Two kinds of seed
    are followed along the thin runs, across short gaps: a line of them at least `min_length` wide (a rule
    Hough's straight lines missed), and each straight rule past its ends (where a bowed rule bends away).
    The runs a seed passes through that are thin go, as in rule_pixels (`ink`: float [H, W], see runs_under).
    """
    if not straight and not has_long_mark(mask, min_length):
        return np.zeros(mask.shape, bool)  # no rule was found, and nothing is long enough to be one
    run_at, heights, height_at = run_map(mask)
    max_run = max(4, max(mask.shape) // 300)  # the thickest rule followed: 4 px on a 1200-px page
    thin = (height_at > 0) & (height_at <= max_run)
    if not thin.any():
        return thin
    thin &= ink <= np.median(ink[thin]) + RULE_DARKER  # most thin ink is rules; darker is pen along them
    gap = max(3, int(min_length / 3))  # about a digit: a rule may run along a stroke through a digit
    paths = [follow(thin, path, step, gap) for path in long_thin_lines(thin, min_length) for step in (1, -1)]
    paths += [follow(thin, path, step, gap) for path, step in straight_ends(straight, mask.shape[1])]
    seeds = np.zeros(mask.shape, np.uint8)
    cv2.polylines(seeds, [p for p in paths if len(p) > 1], False, 1, 3)
    return runs_under(seeds, run_at, heights, max_run, ink)


def has_long_mark(mask: np.ndarray, min_length: float) -> bool:
    """Whether a connected mark of `mask` is at least `min_length` wide."""
    widths = cv2.connectedComponentsWithStats(mask.astype(np.uint8))[2][1:, cv2.CC_STAT_WIDTH]
    return bool((widths >= min_length).any())


def long_thin_lines(thin: np.ndarray, min_length: float) -> list[dict[int, float]]:
    """column -> row of each line of `thin` pixels at least `min_length` wide with about one run per column
    (dashes 8 px apart count as one line: a faint rule breaks up)."""
    bridged = cv2.morphologyEx(thin.astype(np.uint8), cv2.MORPH_CLOSE, np.ones((1, 9), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(bridged, connectivity=8)
    lines = []
    for label in np.nonzero(stats[1:, cv2.CC_STAT_WIDTH] >= min_length)[0] + 1:
        ys, xs = np.nonzero((labels == label) & thin)
        counts = np.bincount(xs)
        columns = np.nonzero(counts)[0]
        if len(ys) <= 2 * len(columns) * np.median(counts[columns]):  # else a blob, not a line
            lines.append(dict(zip(columns.tolist(), (np.bincount(xs, weights=ys)[columns] / counts[columns]).tolist())))
    return lines


def straight_ends(segments: list[Segment], width: int, known: int = ALONG) -> list[tuple[dict[int, float], int]]:
    """(column -> row of the last `known` columns of a straight rule, the direction past that end) for both ends
    of each segment."""
    ends = []
    for x1, y1, x2, y2 in segments:
        (x1, y1), (x2, y2) = sorted([(x1, y1), (x2, y2)])
        slope = (y2 - y1) / max(1, x2 - x1)
        for step, xs in ((1, range(max(x1, x2 - known), x2 + 1)), (-1, range(x1, min(x2, x1 + known) + 1))):
            ends.append(({x: y1 + slope * (x - x1) for x in xs if 0 <= x < width}, step))
    return ends


def follow(thin: np.ndarray, path: dict[int, float], step: int, gap: int) -> np.ndarray:
    """int32 [K, 2]: (x, y) of `path` (column -> row of a rule) extended column by column in direction `step`
    while thin pixels lie within 2 rows of the line through its last ALONG columns, across at most `gap` columns
    without any. A slow bend is followed: each pixel found pulls the line a tenth of the way to it."""
    h, w = thin.shape
    if not path:
        return np.zeros((0, 2), np.int32)
    known = sorted(path)[-ALONG:] if step > 0 else sorted(path)[:ALONG]
    slope, offset = np.polyfit(known, [path[x] for x in known], 1) if len(known) > 1 else (0.0, path[known[0]])
    x, missed = (known[-1] if step > 0 else known[0]) + step, 0
    while 0 <= x < w and missed <= gap:
        y = slope * x + offset
        top = min(max(0, int(round(y)) - 2), h)
        rows = np.nonzero(thin[top : top + 5, x])[0]
        if len(rows):
            path[x] = top + float(rows.mean())
            offset += 0.1 * (path[x] - y)
            missed = 0
        else:
            missed += 1
        x += step
    return np.array([(x, round(path[x])) for x in sorted(path)], np.int32)


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


def run_map(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vertical runs of `mask`: (run_at int32 [H, W], see run_ids; heights int [R]; height_at int [H, W], the
    height of the run each pixel is in, 0 off every run)."""
    starts, columns, heights = vertical_runs(mask)
    run_at = run_ids(mask.shape, starts, columns, heights)
    return run_at, heights, np.concatenate([[0], heights])[run_at]


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
