"""Synthetic handwritten pages with known text, built from real MNIST digits (for the OCR tests)."""

from __future__ import annotations

import cv2
import numpy as np


def digit_ink(image: np.ndarray, height: int) -> np.ndarray:
    """float32 ink in 0-1 of a 28x28 digit cropped to its ink and scaled to `height` pixels."""
    rows, cols = np.flatnonzero(image.max(1) > 30), np.flatnonzero(image.max(0) > 30)
    crop = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255
    width = max(4, round(crop.shape[1] * height / crop.shape[0]))
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def make_page(
    images: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    lines: int = 4,
    size: tuple[int, int] = (900, 1200),
    paper=(250, 250, 245),
    ink=(20, 20, 30),
    shadow: bool = False,
    noise: float = 0.0,
    skew_deg: float = 0.0,
    specks: int = 0,
    ruled: bool = False,
    spacing: tuple[float, float] = (0.12, 0.35),
) -> tuple[np.ndarray, list[str]]:
    """(RGB uint8 [H, W, 3] page, the text of each line with groups separated by one space)."""
    height, width = size
    page = np.ones((height, width, 3), np.float32) * np.array(paper, np.float32)
    alpha = np.zeros((height, width), np.float32)
    texts, used = [], 0
    line_gap = (height - 160) // lines
    for li in range(lines):
        base_h = int(rng.integers(48, 80))
        x, y0 = 60 + int(rng.integers(0, 40)), 90 + li * line_gap
        groups = [int(rng.integers(2, 5)) for _ in range(int(rng.integers(1, 3)))]
        words = []
        for count in groups:
            word = ""
            for _ in range(count):
                image, label = images[used % len(images)], labels[used % len(labels)]
                used += 1
                h = int(base_h * rng.uniform(0.9, 1.1))
                glyph = digit_ink(image, h)
                y = y0 + int(rng.integers(-5, 6))
                if x + glyph.shape[1] >= width - 40:
                    break
                region = alpha[y : y + h, x : x + glyph.shape[1]]
                np.maximum(region, glyph, out=region)
                x += glyph.shape[1] + int(h * rng.uniform(*spacing))  # negative spacing: digits touch
                word += str(label)
            words.append(word)
            x += int(rng.uniform(1.6, 2.4) * base_h)  # a gap wider than a digit starts a new group
        texts.append(" ".join(w for w in words if w))
    page = page * (1 - alpha[..., None]) + np.array(ink, np.float32) * alpha[..., None]
    if ruled:
        cv2.line(page, (40, height - 40), (width - 40, height - 40), (120, 120, 160), 2)
    for _ in range(specks):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.circle(page, (cx, cy), 1, (90, 90, 90), -1)
    if shadow:
        ramp = np.linspace(0.55, 1.0, width, dtype=np.float32)[None, :, None]
        page *= ramp * np.linspace(0.85, 1.0, height, dtype=np.float32)[:, None, None]
    if noise:
        page += rng.normal(0, noise, page.shape).astype(np.float32)
    if skew_deg:
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), skew_deg, 1.0)
        page = cv2.warpAffine(page, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)
    return np.clip(page, 0, 255).astype(np.uint8), texts
