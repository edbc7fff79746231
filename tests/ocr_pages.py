"""Synthetic handwritten pages with known text, built from real train.csv digits (for the OCR tests).

Digits are drawn as pen strokes (src.reader.pen_glyph) in strings, laid out in one or more columns,
optionally slanted or curved, on paper that looks photographed: coloured, ruled or squared, shaded, with
a hand's hard shadow, specks, dashes and noise; then put on a white PDF margin or a dark table if asked.
"""

from __future__ import annotations

import cv2
import numpy as np

from src.reader import pen_glyph


def write_string(alpha: np.ndarray, images, labels, start: int, rng, x: int, y: int, height: int, slope: float,
                 curve: float, spacing: tuple[float, float], right: int, pen: float) -> tuple[str, int]:  # fmt: skip
    """Draw groups of digits from (x, y) onward into `alpha`; (the text with groups split by spaces, digits used)."""
    words, used, x0 = [], 0, x
    for count in [int(rng.integers(2, 5)) for _ in range(int(rng.integers(1, 3)))]:
        word = ""
        for _ in range(count):
            glyph = pen_glyph(images[start + used], rng, pen)
            glyph = cv2.resize(glyph, (max(3, round(glyph.shape[1] * height / glyph.shape[0])), height))
            dx = x - x0
            top = int(y + slope * dx + curve * dx * dx / height)
            if x + glyph.shape[1] >= right or top < 0 or top + height >= alpha.shape[0]:
                break
            region = alpha[top : top + height, x : x + glyph.shape[1]]
            np.maximum(region, glyph, out=region)
            x += glyph.shape[1] + int(height * rng.uniform(*spacing))  # negative spacing: digits touch
            word += str(labels[start + used])
            used += 1
        words.append(word)
        x += int(rng.uniform(1.6, 2.2) * height)  # a gap wider than a digit starts a new group
    return " ".join(w for w in words if w), used


def make_page(images, labels, rng: np.random.Generator, lines: int = 4, columns: int = 1,
              size: tuple[int, int] = (900, 1200), paper=(250, 250, 245), ink=(20, 20, 30),
              shadow: bool = False, hard_shadow: bool = False, corner_shadow: bool = False, noise: float = 0.0,
              skew_deg: float = 0.0,
              specks: int = 0, dashes: int = 0, ruled: bool = False, slope: float = 0.0, curve: float = 0.0,
              spacing: tuple[float, float] = (0.15, 0.4), jpeg: int = 0, paper_rules: str = "",
              ) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """(RGB uint8 [H, W, 3] page, the text of each line in reading order: rows top to bottom, then left to right).

    `ruled`: one line across the bottom; `paper_rules`: "notebook" (lines with a margin line) or "squared",
    printed under the ink, as dark as a pencil's grey at most.
    """
    height, width = size
    alpha = np.zeros((height, width), np.float32)
    rows: list[list[str]] = [[] for _ in range(lines)]
    used, line_gap, column_width = 0, (height - 160) // lines, (width - 80) // columns
    pen = float(rng.uniform(1 / 25, 1 / 7))  # one pen for the whole page
    for column in range(columns):
        for li in range(lines):
            h = int(rng.integers(40, 70))
            x = 40 + column * column_width + int(rng.integers(10, 40))
            y = 80 + li * line_gap + int(rng.integers(-5, 6))
            right = 40 + (column + 1) * column_width - (int(0.3 * column_width) if columns > 1 else 40)
            text, n = write_string(alpha, images, labels, used, rng, x, y, h, slope, curve, spacing, right, pen)
            used += n
            rows[li].append(text)
    page = np.ones((height, width, 3), np.float32) * np.array(paper, np.float32)
    if paper_rules:
        print_rules(page, paper_rules, rng)
    page = page * (1 - alpha[..., None]) + np.array(ink, np.float32) * alpha[..., None]
    for _ in range(dashes):  # short dashes and smudges between the strings
        cx, cy = int(rng.integers(60, width - 60)), int(rng.integers(60, height - 60))
        if alpha[max(0, cy - 40) : cy + 40, max(0, cx - 40) : cx + 40].max() == 0:
            if rng.random() < 0.5:
                cv2.line(page, (cx - 12, cy), (cx + 12, cy + int(rng.integers(-4, 5))), ink, 3)
            else:
                cv2.ellipse(page, (cx, cy), (9, 5), float(rng.uniform(0, 180)), 0, 360, (110, 110, 110), -1)
    if ruled:
        cv2.line(page, (40, height - 40), (width - 40, height - 40), (120, 120, 160), 2)
    for _ in range(specks):
        cv2.circle(page, (int(rng.integers(0, width)), int(rng.integers(0, height))), 1, (90, 90, 90), -1)
    if shadow:
        ramp = np.linspace(0.55, 1.0, width, dtype=np.float32)[None, :, None]
        page *= ramp * np.linspace(0.85, 1.0, height, dtype=np.float32)[:, None, None]
    if hard_shadow:  # a hand's shadow over the bottom of the page, with a sharp edge
        shade = np.ones((height, width), np.float32)
        cv2.ellipse(shade, (width // 2, height), (width // 2, height // 5), 0, 180, 360, 0.45, -1)
        page *= cv2.GaussianBlur(shade, (0, 0), 3)[..., None]
    if corner_shadow:  # a hand's shadow over the top left corner, over the start of the strings there
        shade = np.ones((height, width), np.float32)
        cv2.fillPoly(shade, [np.array([[0, 0], [width // 2, 0], [0, int(height * 0.7)]], np.int32)], 0.5)
        page *= cv2.GaussianBlur(shade, (0, 0), 4)[..., None]
    if noise:
        page += rng.normal(0, noise, page.shape).astype(np.float32)
    if skew_deg:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), skew_deg, 1.0)
        page = cv2.warpAffine(page, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    page = np.clip(page, 0, 255).astype(np.uint8)
    if jpeg:
        page = cv2.imdecode(cv2.imencode(".jpg", page, [cv2.IMWRITE_JPEG_QUALITY, jpeg])[1], cv2.IMREAD_UNCHANGED)
    return page, [text for row in rows for text in row if text]


def print_rules(page: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    """Rule `page` (float32 [H, W, 3]) in place: a notebook's lines and red margin line, or a squared grid.

    The step (28-40 px) is smaller than the digits (40-70 px), so every string crosses rules.
    """
    height, width = page.shape[:2]
    step, shade = int(rng.integers(28, 41)), float(rng.uniform(0.45, 0.75))  # shade: the rule's share of the paper
    colour = tuple(float(c) for c in page[0, 0] * (shade, shade + 0.1, min(1.0, shade + 0.3)))  # bluish
    for y in range(step, height, step):
        cv2.line(page, (0, y), (width, y), colour, 2)
    if kind == "squared":
        for x in range(step, width, step):
            cv2.line(page, (x, 0), (x, height), colour, 2)
    else:
        cv2.line(page, (30, 0), (30, height), (200.0, 80.0, 80.0), 2)  # the red margin line


def on_margin(page: np.ndarray, margin: int = 120) -> np.ndarray:
    """The page as a photo placed on a white PDF page with a margin (what a scanner app makes)."""
    return cv2.copyMakeBorder(page, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=(255, 255, 255))


def on_table(page: np.ndarray, rng: np.random.Generator, margin: int = 100) -> np.ndarray:
    """The sheet photographed lying on a dark wooden table (streaky texture around it)."""
    h, w = page.shape[:2]
    grain = rng.normal(0, 1, (h + 2 * margin, 1)).astype(np.float32) * np.ones((1, w + 2 * margin), np.float32)
    grain = cv2.GaussianBlur(grain, (0, 0), 2) * 12 + rng.normal(0, 6, grain.shape).astype(np.float32)
    table = np.clip(np.array([95, 70, 45], np.float32) + grain[..., None], 0, 255).astype(np.uint8)
    table[margin : margin + h, margin : margin + w] = page
    return table


def bowed(page: np.ndarray, amplitude: float, axis: str = "y") -> np.ndarray:
    """The page photographed bent, like an open book's: rows (axis "y") or columns ("x") shifted by up to
    `amplitude` pixels in the middle, so its rules curve."""
    h, w = page.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    if axis == "x":
        return cv2.remap(page, xs - amplitude * np.sin(np.pi * ys / h), ys, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
    return cv2.remap(page, xs, ys - amplitude * np.sin(np.pi * xs / w), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)  # fmt: skip
