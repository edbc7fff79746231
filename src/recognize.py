"""Read one page: ink -> digit boxes -> lines -> digits, in whichever of the four orientations reads best.

`classify` is any callable from digits uint8 [N, 28, 28] to probabilities float32 [N, 11] (the 11th:
not a digit): the committed reader (src/reader.py) or a run's fold ensemble (src/ensemble.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from src import layout, page, reader
from src.errors import DigitsError
from src.layout import Box
from src.reader import NOT_A_DIGIT, normalize_digit

Classify = Callable[[np.ndarray], np.ndarray]
MAX_PAGES = 500  # a PDF longer than this is refused up front rather than read for an hour
MIN_CONFIDENCE = 0.5  # below this a mark is not confidently a digit, and is not read as one
TURN_MARGIN = 0.03  # a turned reading must beat the upright one by this much mean confidence
FOUR_OR_NINE = 0.1  # see loop_checked
THIN_PEN = 0.14  # stroke width / digit height: a pen this thin leaves a 9's loop a hole
CLOSED_LOOP = 0.02  # a hole this share of the box is a closed loop
SPLIT_MARGIN = 0.05  # touching digits: the pieces must be read this much more surely than the whole box


@dataclass
class Digit:
    digit: int | None  # None: a mark that is not confidently a digit (left out of the text)
    confidence: float
    box: Box  # x, y, w, h on the page as given


@dataclass
class Line:
    digits: list[Digit]
    block: int = 0  # the column on the page, counted from the left
    groups: list[int] = field(default_factory=list)  # index (in digits) of the first digit of each later group

    @property
    def text(self) -> str:
        chars = ["" if d.digit is None else str(d.digit) for d in self.digits]
        for i in sorted(self.groups, reverse=True):
            chars.insert(i, " ")
        return " ".join("".join(chars).split())


@dataclass
class PageResult:
    rotation: int  # the clockwise turn (0/90/180/270) that sets the page upright
    lines: list[Line]


def load_classifier(model: Path | None = None) -> Classify:
    """The committed reader, other reader weights (.npz), or a run's fold ensemble (a run folder)."""
    if model is None or model.suffix == ".npz":
        return reader.Reader.load(model or reader.WEIGHTS)
    from src import ensemble  # TensorFlow: only when a run's models are asked for

    models = ensemble.load_fold_models(model, max_models=5)
    return lambda digits: ensemble.average_probs(models, digits)


def read_file(
    path: Path, classify: Classify, log: Callable[[str], None] = lambda line: None, max_pages: int = MAX_PAGES
) -> Iterator[tuple[int, int, np.ndarray, PageResult]]:
    """(page number, pages, RGB page, its reading) for each page of `path`, read lazily, with progress."""
    total = page.count_pages(path)
    if total > max_pages:
        raise DigitsError(f"{path}: {total} pages; at most {max_pages} are read at once (split the file)")
    start = time.time()
    for number, rgb in enumerate(page.iter_pages(path), 1):
        yield number, total, rgb, read_page(rgb, classify)
        if total > 1:
            eta = (time.time() - start) / number * (total - number)
            log(f"[ocr] {path.name}: page {number}/{total} ({eta:.0f} s left)")


def read_page(rgb: np.ndarray, classify: Classify) -> PageResult:
    """The page's lines in reading order, in the orientation whose marks the reader is surest of."""
    if min(rgb.shape[:2]) < page.MIN_SIDE:
        return PageResult(0, [])
    small, scale = page.work_size(rgb)
    ink = page.ink_map(small)
    mask = page.binarize(ink)
    best: Marks | None = None
    for rotation in (0, 90, 180, 270):
        marks = turned_marks(ink, mask, rotation, classify)
        if best is None or marks.score > best.score + (TURN_MARGIN if best.rotation == 0 else 1e-6):
            best = marks
    lines = read_lines(best, classify)
    return PageResult(best.rotation, [unrotate(line, best.rotation, best.ink.shape, scale) for line in lines])


@dataclass
class Marks:
    """One orientation of a page: its ink and mask, the boxes of its marks as they stand, and their readings."""

    rotation: int
    ink: np.ndarray  # float [H, W], turned
    mask: np.ndarray  # uint8 [H, W], turned
    boxes: list[Box]
    typical: float  # digit height
    probs: dict[Box, np.ndarray]  # float32 [11] for each box

    @property
    def score(self) -> float:
        """Mean confidence of the reader in the marks as they stand (upright digits score highest)."""
        return float(np.mean([self.probs[b][:10].max() for b in self.boxes])) if self.boxes else 0.0


def turned_marks(ink: np.ndarray, mask: np.ndarray, rotation: int, classify: Classify) -> Marks:
    """The page turned by `rotation`: its marks (broken strokes joined) read as they stand."""
    k = -(rotation // 90)
    ink, mask = np.rot90(ink, k), np.rot90(mask, k)
    found, typical = layout.marks(mask)
    boxes = [b for b in layout.join_broken(found, typical) if b[3] >= 0.35 * typical] if found else []
    return Marks(rotation, ink, mask, boxes, typical if found else 0.0, read_boxes(ink, mask, boxes, classify))


def read_boxes(ink: np.ndarray, mask: np.ndarray, boxes: list[Box], classify: Classify) -> dict[Box, np.ndarray]:
    """The reader's probabilities (with the "not a digit" column) for each box."""
    if not boxes:
        return {}
    crops = np.stack([crop_digit(ink, mask, b) for b in boxes])
    return dict(zip(boxes, with_reject_column(classify(crops))))


def read_lines(marks: Marks, classify: Classify) -> list[Line]:
    """The lines of an upright page: touching digits split where the reader is surer of the pieces.

    The whole boxes were read when the orientation was chosen; only the pieces of cuts are read here.
    """
    if not marks.boxes:
        return []
    digit_boxes = [b for b in marks.boxes if b[3] >= 0.6 * marks.typical] or marks.boxes
    typical_width = float(np.median([b[2] for b in digit_boxes]))
    options = {b: layout.segmentations(b, marks.mask, typical_width, split_width(marks.probs[b])) for b in marks.boxes}
    pieces = [p for cuts in options.values() for ps in cuts for p in ps if p not in marks.probs]
    probs = {**marks.probs, **read_boxes(marks.ink, marks.mask, list(dict.fromkeys(pieces)), classify)}
    chosen = [p for b, cuts in options.items() for p in best_reading(b, cuts, probs)]
    probs = {b: loop_checked(probs[b], marks.mask, b) for b in chosen}
    return [to_line(line, probs) for line in layout.layout(chosen, marks.typical)]


def loop_checked(p: np.ndarray, mask: np.ndarray, box: Box) -> np.ndarray:
    """`p` (float32 [11]), with 4 and 9 swapped when the reader takes for a 9 (doubting it: a 4 at least
    FOUR_OR_NINE) a mark whose loop is open, written with a pen thin enough that a loop would show a hole.

    Many of MNIST's 9s are written open at the top, so the reader learnt that an open-topped 4 with a curled
    stroke is a 9; on paper a 9's loop is closed, and an open one is a 4.
    """
    if p[:10].argmax() != 9 or p[4] < FOUR_OR_NINE:
        return p
    x, y, w, h = box
    ink = mask[y : y + h, x : x + w].astype(bool)
    if ink.sum() > THIN_PEN * h * reader.thin(ink).sum() or largest_hole(ink) >= CLOSED_LOOP * w * h:
        return p
    return p[[0, 1, 2, 3, 9, 5, 6, 7, 8, 4, 10]]


def largest_hole(ink: np.ndarray) -> int:
    """Pixels of the largest region of paper that ink (bool [h, w]) encloses."""
    paper = np.pad(~ink, 1, constant_values=True).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(paper, connectivity=4)
    return max((int(stats[k, cv2.CC_STAT_AREA]) for k in range(1, count) if k != labels[0, 0]), default=0)


def split_width(p: np.ndarray) -> float:
    """Typical digit widths a box must span before cuts are tried (`p`: its reading, float32 [11]).

    Two touching digits are wider than one, but a narrow pair (a 1 beside a 4) is not much wider; when
    the whole box does not read as a digit, it is cut from a narrower width.
    """
    return layout.SPLIT_WIDTH if confidence(p) >= MIN_CONFIDENCE else layout.UNREAD_SPLIT_WIDTH


def with_reject_column(probs: np.ndarray) -> np.ndarray:
    """float32 [N, 11]: a 10-class ensemble's output gets an empty "not a digit" column."""
    if probs.shape[1] == NOT_A_DIGIT:
        return np.concatenate([probs, np.zeros((len(probs), 1), probs.dtype)], axis=1)
    return probs


def confidence(p: np.ndarray) -> float:
    """How surely a mark is a digit: the best digit's probability, zero when "not a digit" wins."""
    return 0.0 if p.argmax() == NOT_A_DIGIT else float(p[:10].max())


def best_reading(box: Box, segmentations: list[list[Box]], probs: dict[Box, np.ndarray]) -> list[Box]:
    """A wide box is one wide digit or several touching ones: keep the reading the reader is surest of."""
    best, best_sureness = [box], confidence(probs[box]) + SPLIT_MARGIN
    for pieces in segmentations:
        sureness = [confidence(probs[p]) for p in pieces]
        if np.mean(sureness) > best_sureness:
            best, best_sureness = pieces, float(np.mean(sureness))
    return best


def to_line(line: layout.LineBoxes, probs: dict[Box, np.ndarray]) -> Line:
    digits = []
    for b in line.boxes:
        p = probs[b]
        sure = confidence(p)
        digits.append(Digit(int(p[:10].argmax()) if sure >= MIN_CONFIDENCE else None, round(sure, 4), b))
    return Line(digits, line.block, list(line.groups))


def crop_digit(ink: np.ndarray, mask: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = box
    return normalize_digit(ink[y : y + h, x : x + w] * mask[y : y + h, x : x + w])


def unrotate(line: Line, rotation: int, shape: tuple[int, ...], scale: float) -> Line:
    """Map boxes found on the page turned by `rotation` back to the page as given (and its full size)."""
    h, w = shape[:2]  # of the turned page
    for d in line.digits:
        x, y, bw, bh = d.box
        if rotation == 90:
            x, y, bw, bh = y, w - x - bw, bh, bw
        elif rotation == 180:
            x, y = w - x - bw, h - y - bh
        elif rotation == 270:
            x, y, bw, bh = h - y - bh, x, bh, bw
        d.box = tuple(int(round(v / scale)) for v in (x, y, bw, bh))
    return line
