"""The OCR reader: a small CNN that reads one MNIST-normalised mark as a digit 0-9 or "not a digit".

Trained from train.csv along the path a page takes: each digit is redrawn as pen ink at page scale
(stroke width, slant, blur, noise, JPEG, partial crops, a neighbour's fragment), thresholded, and
normalised exactly as `src.ocr` normalises what it finds on a page. An 11th class holds what is no
digit: specks, dashes, smudges, arcs, crosses, noise and fragments of digits.

Inference runs in NumPy from the committed weights (`src/reader.npz`, float16): reading a page needs
neither TensorFlow nor a trained run, and the reader loads in milliseconds.

    python -m src.ocr train     # rebuild src/reader.npz from train.csv
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from src.config import ReaderConfig
from src.errors import DigitsError

NOT_A_DIGIT = 10
CLASSES = 11
WEIGHTS = Path(__file__).with_name("reader.npz")
# One spec, two executors: Keras trains it, NumPy runs it. Saved with the weights, so a reader file
# says how to run itself.
Layers = tuple[tuple[str, int], ...]
LAYERS: Layers = (
    ("conv", 32), ("conv", 32), ("pool", 0), ("conv", 64), ("conv", 64), ("pool", 0), ("dense", 256),
    ("dense", CLASSES),
)  # fmt: skip
FIRST_LAYERS: Layers = (  # readers saved before the spec was stored with them
    ("conv", 32), ("pool", 0), ("conv", 64), ("conv", 64), ("pool", 0), ("dense", 128), ("dense", CLASSES),
)  # fmt: skip


# --- MNIST normalisation (the one path from ink to a 28x28 digit, for pages and for training) ------


def normalize_digit(ink: np.ndarray) -> np.ndarray:
    """uint8 [28, 28] from float ink [h, w] in 0-1: 20x20 box keeping aspect, centred by mass, MNIST strokes."""
    crop = ink.astype(np.float32)
    if crop.size == 0 or crop.max() <= 0.1:
        return np.zeros((28, 28), np.uint8)
    crop = normalize_stroke(cut_to_ink(crop, 0.1))
    h, w = crop.shape
    scale = 20.0 / max(h, w)
    small = cv2.resize(crop, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
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


# --- pen ink: a train.csv digit as a phone sees it on paper -----------------------------------------


def crop_to_ink(image: np.ndarray) -> np.ndarray:
    """float32 [h, w] in 0-1: a uint8 [28, 28] digit cut to its ink."""
    ink = image.astype(np.float32) / 255
    return cut_to_ink(ink, 30 / 255) if ink.max() > 30 / 255 else np.zeros((4, 4), np.float32)


LINE_HEIGHT = 40  # centre lines are traced on a copy of the digit this tall


def centre_line(image: np.ndarray) -> np.ndarray:
    """uint8 [44, w]: the one-pixel centre line of a 28x28 digit scaled to 40 pixels high (what a pen traced)."""
    crop = crop_to_ink(image)
    width = max(2, round(crop.shape[1] * LINE_HEIGHT / crop.shape[0]))
    big = cv2.resize(crop, (width, LINE_HEIGHT), interpolation=cv2.INTER_CUBIC)
    return thin(np.pad(big, 2) > 0.4).astype(np.uint8)


def pen_glyph(
    image: np.ndarray, rng: np.random.Generator, width_ratio: float | None = None, line: np.ndarray | None = None,
    bend: float = 0.0,
) -> np.ndarray:  # fmt: skip
    """float32 [h, w] ink in 0-1: a 28x28 digit redrawn at page scale with a pen (random unless given), slant, size.

    The digit's centre line (`line`, traced when not given) is drawn again with a round pen, so strokes
    stay whole and even at any width; `width_ratio` is the pen's width over the digit's height (MNIST: ~1/8).
    `bend`: the probability of an elastic bend (`elastic`).
    """
    line = centre_line(image) if line is None else line
    height = int(rng.integers(30, 96))
    width = max(2, round(line.shape[1] * height / LINE_HEIGHT * rng.uniform(0.8, 1.2)))
    big = (cv2.resize(line.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.2).astype(
        np.float32
    )
    pad = height // 3
    big = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    shear, angle = rng.uniform(-0.3, 0.3), rng.uniform(-12, 12)
    centre = (big.shape[1] / 2, big.shape[0] / 2)
    matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
    matrix[0, 1] += shear
    matrix[0, 2] -= shear * centre[1]
    stroke = cv2.warpAffine(big, matrix, big.shape[::-1], flags=cv2.INTER_LINEAR)
    if bend and rng.random() < bend:
        stroke = elastic(stroke, rng, height)
    stroke = (stroke > 0.3).astype(np.uint8)
    if width_ratio is None:  # from a fine pen (1/30 of the height) to a marker (1/5)
        width_ratio = float(np.exp(rng.uniform(np.log(1 / 30), np.log(1 / 5))))
    pen = int(round(width_ratio * height))
    if pen > 1:
        stroke = cv2.dilate(stroke, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (pen, pen)))
    sigma = rng.uniform(0.3, 0.9) * max(1.0, height / 60)
    return cut_to_ink(cv2.GaussianBlur(stroke.astype(np.float32), (0, 0), sigma))


def elastic(image: np.ndarray, rng: np.random.Generator, height: int) -> np.ndarray:
    """float32 [h, w]: `image` bent by a smooth random field (hands wobble where an affine map cannot).

    The field is smooth on the scale of a stroke's length (a fifth of the digit) and moves ink by up
    to about 5% of the digit's height, so a centre line bends but does not tear.
    """
    sigma = height * rng.uniform(0.12, 0.22)
    amount = height * rng.uniform(0.01, 0.05)
    ys, xs = np.indices(image.shape, dtype=np.float32)
    for grid in (xs, ys):
        field = cv2.GaussianBlur(rng.standard_normal(image.shape).astype(np.float32), (0, 0), sigma)
        grid += field * (amount / max(float(field.std()), 1e-6))
    return cv2.remap(image, xs, ys, cv2.INTER_LINEAR, borderValue=0)


def thin(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: the one-pixel centre line of a bool mask (Zhang-Suen thinning, vectorised)."""
    img = np.pad(mask.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p2, p3, p4, p5 = img[:-2, 1:-1], img[:-2, 2:], img[1:-1, 2:], img[2:, 2:]
            p6, p7, p8, p9 = img[2:, 1:-1], img[2:, :-2], img[1:-1, :-2], img[:-2, :-2]
            ring = (p2, p3, p4, p5, p6, p7, p8, p9, p2)
            count = sum(ring[:-1])
            transitions = sum((a == 0) & (b == 1) for a, b in zip(ring, ring[1:]))
            gone = (img[1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (transitions == 1)
            if step == 0:
                gone &= (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                gone &= (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            img[1:-1, 1:-1][gone] = 0
            changed |= bool(gone.any())
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def cut_to_ink(ink: np.ndarray, level: float = 0.05) -> np.ndarray:
    """float ink [h, w] cut to the rows and columns holding a value above `level` (all of it when none does)."""
    rows, cols = np.flatnonzero(ink.max(1) > level), np.flatnonzero(ink.max(0) > level)
    if len(rows) == 0:
        return ink
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def with_neighbour_fragment(ink: np.ndarray, other: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`ink` with a sliver of another glyph at its left or right edge, as a cut between touching digits leaves."""
    other = cv2.resize(other, (max(2, round(other.shape[1] * ink.shape[0] / other.shape[0])), ink.shape[0]))
    width = max(1, int(other.shape[1] * rng.uniform(0.06, 0.2)))
    gap = int(rng.integers(-1, 3))
    left = rng.random() < 0.5
    sliver = other[:, -width:] if left else other[:, :width]
    canvas = np.zeros((ink.shape[0], ink.shape[1] + width + max(gap, 0)), np.float32)
    if left:
        canvas[:, :width] = sliver
        canvas[:, canvas.shape[1] - ink.shape[1] :] = np.maximum(canvas[:, canvas.shape[1] - ink.shape[1] :], ink)
    else:
        canvas[:, : ink.shape[1]] = ink
        canvas[:, -width:] = np.maximum(canvas[:, -width:], sliver)
    return canvas


def partial(ink: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """`ink` with a fraction in [low, high) of one side cut off."""
    h, w = ink.shape
    cut = rng.uniform(low, high)
    side = int(rng.integers(4))
    if side == 0:
        return ink[int(h * cut) :]
    if side == 1:
        return ink[: h - int(h * cut)]
    if side == 2:
        return ink[:, int(w * cut) :]
    return ink[:, : w - int(w * cut)]


def as_photographed(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ink as it comes out of a page's ink map: faded, on grainy paper, maybe JPEG-compressed, thresholded."""
    contrast = rng.uniform(0.35, 1.0)
    seen = ink * contrast + rng.normal(0, rng.uniform(0, 0.05), ink.shape).astype(np.float32)
    if rng.random() < 0.5:
        grey = np.clip(220 * (1 - seen), 0, 255).astype(np.uint8)
        _, jpeg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 95))])
        seen = 1 - cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 220
    seen = np.clip(seen, 0, 1)
    return seen * (seen > contrast * rng.uniform(0.2, 0.5))  # the page threshold keeps ink, drops paper


def augmented_digit(
    images: np.ndarray, index: int, rng: np.random.Generator, lines: list[np.ndarray] | None = None, bend: float = 0.0
) -> np.ndarray:
    """uint8 [28, 28]: digit `index` of `images` through pen, photo and the OCR normalisation.

    `lines`: the digits' centre lines, traced once for a whole training set; `bend`: see `pen_glyph`.
    """
    ink = pen_glyph(images[index], rng, line=lines[index] if lines else None, bend=bend)
    if rng.random() < 0.15:
        ink = partial(ink, rng, 0.03, 0.15)
    if rng.random() < 0.2:
        ink = with_neighbour_fragment(ink, pen_glyph(images[rng.integers(len(images))], rng), rng)
    return normalize_digit(as_photographed(ink, rng))


# --- what is not a digit -----------------------------------------------------------------------------


def random_mark(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 ink of one non-digit mark. No near-vertical bars: those are ones."""
    size = int(rng.integers(20, 80))
    canvas = np.zeros((size, size), np.float32)
    kind = int(rng.integers(9))
    thickness = max(1, int(size * rng.uniform(0.04, 0.15)))
    c = size // 2
    if kind == 0:  # speck or smudge: a filled blob
        axes = (max(1, int(c * rng.uniform(0.2, 0.9))), max(1, int(c * rng.uniform(0.2, 0.9))))
        cv2.ellipse(canvas, (c, c), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
        canvas = cv2.GaussianBlur(canvas, (0, 0), rng.uniform(0.5, 3))
    elif kind == 1:  # dash, within 40 degrees of horizontal (a steeper one may be a slanted 1)
        angle = np.radians(rng.uniform(-40, 40))
        dx, dy = int(c * 0.9 * np.cos(angle)), int(c * 0.9 * np.sin(angle))
        cv2.line(canvas, (c - dx, c - dy), (c + dx, c + dy), 1.0, thickness)
    elif kind == 2:  # an arc
        axes = (max(2, int(c * rng.uniform(0.4, 0.9))), max(2, int(c * rng.uniform(0.4, 0.9))))
        start = rng.uniform(0, 360)
        cv2.ellipse(canvas, (c, c), axes, 0, start, start + rng.uniform(40, 160), 1.0, thickness)
    elif kind == 3:  # a cross
        d = int(c * 0.7)
        cv2.line(canvas, (c - d, c - d), (c + d, c + d), 1.0, thickness)
        cv2.line(canvas, (c - d, c + d), (c + d, c - d), 1.0, thickness)
    elif kind == 4:  # paper texture or noise that passed the threshold
        canvas = (cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.5) > 0.55).astype(np.float32)
    elif kind == 7:  # one side of a digit: what a wrong cut between touching digits leaves
        canvas = digit_side(pen_glyph(images[rng.integers(len(images))], rng), rng)
    elif kind == 8:  # two digits touching, taken for one mark: the pair must not read as one digit
        canvas = touching_pair(images, rng)
    else:  # a small fragment of a digit
        ink = pen_glyph(images[rng.integers(len(images))], rng)
        h, w = ink.shape
        fh, fw = max(2, int(h * rng.uniform(0.2, 0.4))), max(2, int(w * rng.uniform(0.3, 0.6)))
        y, x = int(rng.integers(0, h - fh + 1)), int(rng.integers(0, w - fw + 1))
        canvas = cut_to_ink(ink[y : y + fh, x : x + fw])
        if canvas.shape[0] > 2 * canvas.shape[1]:  # a vertical bar reads as a 1 by rights
            canvas = canvas.T.copy()
    return canvas


def digit_side(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The left or right 30-60% of a digit's ink; a bar-like side is laid flat (an upright bar is a 1)."""
    width = max(2, int(ink.shape[1] * rng.uniform(0.3, 0.6)))
    side = cut_to_ink(ink[:, :width] if rng.random() < 0.5 else ink[:, -width:])
    return side.T.copy() if side.shape[0] > 2.5 * side.shape[1] else side


def touching_pair(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two digits written with one pen, side by side and touching or overlapping a little."""
    pen = float(rng.uniform(1 / 25, 1 / 7))
    first, second = (pen_glyph(images[rng.integers(len(images))], rng, pen) for _ in range(2))
    height = first.shape[0]
    second = cv2.resize(second, (max(2, round(second.shape[1] * height / second.shape[0])), height))
    start = max(1, first.shape[1] - int(height * rng.uniform(0.0, 0.12)))
    canvas = np.zeros((height, start + second.shape[1]), np.float32)
    canvas[:, : first.shape[1]] = first
    np.maximum(canvas[:, start:], second, out=canvas[:, start:])
    return canvas


def augmented_mark(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return normalize_digit(as_photographed(random_mark(images, rng), rng))


# --- the training set ----------------------------------------------------------------------------------


def heldout_rows(labels: np.ndarray, n: int) -> np.ndarray:
    """Sorted indices of the `n` train.csv rows the reader never trains on (the OCR tests draw from them)."""
    from src.data import stratified_subsample

    return stratified_subsample(labels, n, seed=1234)


PART = 4096  # digits drawn per task: an epoch's data is the same however many processes draw it


def epoch_parts(n_images: int, config: ReaderConfig, seed: int) -> list[tuple[np.ndarray, int, list[int], float]]:
    """One epoch as tasks (rows of `images` to draw, "not a digit" marks to draw, the task's seed, elastic share)."""
    order = np.tile(np.arange(n_images), config.copies)
    marks_per_digit = config.reject_fraction / (1 - config.reject_fraction)
    parts = []
    for k, start in enumerate(range(0, len(order), PART)):
        stop = min(start + PART, len(order))
        marks = int(stop * marks_per_digit) - int(start * marks_per_digit)
        parts.append((order[start:stop], marks, [seed, k], config.elastic_p))
    return parts


def draw_part(
    images: np.ndarray, labels: np.ndarray, lines: list[np.ndarray] | None, part: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """(x uint8 [n, 28, 28], y int64 [n]) for one task of `epoch_parts`: pen digits, then marks."""
    rows, marks, seed, bend = part
    rng = np.random.default_rng(seed)
    digits = [augmented_digit(images, int(index), rng, lines, bend) for index in rows]
    x = np.stack(digits + [augmented_mark(images, rng) for _ in range(marks)])
    return x, np.concatenate([labels[rows].astype(np.int64), np.full(marks, NOT_A_DIGIT)])


def make_epoch(
    images: np.ndarray, labels: np.ndarray, config: ReaderConfig, seed: int, lines: list[np.ndarray] | None = None,
    draw_map: Callable = map,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(x uint8 [N, 28, 28], y int64 [N]): `copies` pen versions of every digit plus "not a digit" marks, shuffled.

    `draw_map(function, parts)` draws the parts (a process pool's map from `Drawing`; `map` in this process).
    """
    parts = epoch_parts(len(images), config, seed)
    if draw_map is map:
        drawn = list(map(functools.partial(draw_part, images, labels, lines), parts))
    else:
        drawn = list(draw_map(draw_in_worker, parts))
    x, y = np.concatenate([p[0] for p in drawn]), np.concatenate([p[1] for p in drawn])
    shuffle = np.random.default_rng([seed, len(parts)]).permutation(len(y))
    return x[shuffle], y[shuffle]


# Each drawing process holds the training digits once (sent at its start) rather than with every task.
_WORKER_DATA: dict[str, object] = {}


def _hold(images: np.ndarray, labels: np.ndarray, lines: list[np.ndarray] | None) -> None:
    _WORKER_DATA.update(images=images, labels=labels, lines=lines)


def draw_in_worker(part) -> tuple[np.ndarray, np.ndarray]:
    return draw_part(_WORKER_DATA["images"], _WORKER_DATA["labels"], _WORKER_DATA["lines"], part)


def drawing_pool(images: np.ndarray, labels: np.ndarray, lines: list[np.ndarray] | None, workers: int):
    """Processes that draw epochs (spawned, so they never inherit a running TensorFlow)."""
    return ProcessPoolExecutor(
        workers, multiprocessing.get_context("spawn"), initializer=_hold, initargs=(images, labels, lines)
    )


# --- the network: Keras to train, NumPy to read ------------------------------------------------------------


def build_keras(spec: Layers | None = None):
    import keras
    from keras import layers

    spec = spec or LAYERS
    inputs = keras.Input((28, 28, 1))
    x = layers.Rescaling(1 / 255)(inputs)
    for kind, units in spec:
        if kind == "conv":
            x = layers.Conv2D(units, 3, padding="same", activation="relu")(x)
        elif kind == "pool":
            x = layers.MaxPooling2D()(x)
        elif units == CLASSES:
            x = layers.Dense(units, activation="softmax")(layers.Dropout(0.3)(x))
        else:
            x = layers.Dense(units, activation="relu")(layers.Flatten()(x) if len(x.shape) > 2 else x)
    return keras.Model(inputs, x)


def keras_weights(model) -> list[np.ndarray]:
    return [w for layer in model.layers for w in layer.get_weights()]


class Reader:
    """Callable: digits uint8 [N, 28, 28] -> probs float32 [N, 11] (index 10: not a digit). NumPy only.

    Holds one or more members (networks trained with other seeds); their probabilities are averaged.
    """

    def __init__(self, members: list[list[np.ndarray]], info: dict | None = None, layers: Layers | None = None):
        self.members = [[w.astype(np.float32) for w in weights] for weights in members]
        self.info = info or {}
        self.layers = layers or LAYERS

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> Reader:
        if not path.is_file():
            raise DigitsError(f"{path}: no reader weights; rebuild them with python -m src.ocr train")
        try:
            with np.load(path) as saved:
                info = json.loads(str(saved["info"]))
                members = [[saved[f"m{m}_w{i}"] for i in range(info["arrays"])] for m in range(info["members"])]
        except (OSError, ValueError, KeyError) as error:
            raise DigitsError(
                f"{path}: not reader weights ({error}); rebuild them with python -m src.ocr train"
            ) from None
        return cls(members, info, tuple((kind, units) for kind, units in info.get("layers", FIRST_LAYERS)))

    def save(self, path: Path) -> None:
        from src.files import write_atomically

        info = {**self.info, "members": len(self.members), "arrays": len(self.members[0]), "layers": self.layers}
        arrays = {f"m{m}_w{i}": w.astype(np.float16) for m, ws in enumerate(self.members) for i, w in enumerate(ws)}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, info=json.dumps(info), **arrays)
        write_atomically(path, buffer.getvalue())

    def __call__(self, digits: np.ndarray) -> np.ndarray:
        out = [self.forward(digits[i : i + 256]) for i in range(0, len(digits), 256)]
        return np.concatenate(out) if out else np.zeros((0, CLASSES), np.float32)

    def forward(self, digits: np.ndarray) -> np.ndarray:
        x = digits.astype(np.float32)[..., None] / 255
        members = [member_forward(weights, x, self.layers) for weights in self.members]
        return np.mean(members, axis=0).astype(np.float32)


def member_forward(weights: list[np.ndarray], x: np.ndarray, spec: Layers) -> np.ndarray:
    """Softmax probabilities float32 [N, 11] of one network for x float32 [N, 28, 28, 1] in 0-1."""
    params = iter(weights)
    for kind, _ in spec:
        if kind == "conv":
            x = np.maximum(conv3x3(x, next(params)) + next(params), 0)
        elif kind == "pool":
            n, h, w, c = x.shape
            x = x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        else:
            x = x.reshape(len(x), -1) @ next(params) + next(params)
            x = np.maximum(x, 0) if kind == "dense" and x.shape[1] != CLASSES else x
    x = np.exp(x - x.max(axis=1, keepdims=True))
    return x / x.sum(axis=1, keepdims=True)


def conv3x3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """'same' 3x3 convolution as one matrix product: x float32 [N, H, W, C], kernel [3, 3, C, F]."""
    n, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    columns = np.concatenate([padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], axis=-1)
    return (columns.reshape(-1, 9 * c) @ kernel.reshape(9 * c, -1)).reshape(n, h, w, -1)


# --- training -------------------------------------------------------------------------------------------


def train(
    images: np.ndarray, labels: np.ndarray, lines: list[np.ndarray], config: ReaderConfig,
    log: Callable[[str], None] = print,
) -> list[np.ndarray]:  # fmt: skip
    """The weights of one network trained on images uint8 [N, 28, 28] with their centre lines; new data every epoch."""
    import keras

    keras.utils.set_random_seed(config.seed)
    model = build_keras()
    per_epoch = int(len(images) * config.copies / (1 - config.reject_fraction))
    steps = config.epochs * -(-per_epoch // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, warmup_target=None)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.time()
    with drawing_pool(images, labels, lines, drawing_workers(config)) as pool, ThreadPoolExecutor(1) as ahead:
        # the next epoch is drawn while this one trains
        epoch_data = functools.partial(make_epoch, images, labels, config, lines=lines, draw_map=pool.map)
        upcoming = ahead.submit(epoch_data, seed=config.seed * 1000)
        for epoch in range(config.epochs):
            x, y = upcoming.result()
            if epoch + 1 < config.epochs:
                upcoming = ahead.submit(epoch_data, seed=config.seed * 1000 + epoch + 1)
            history = model.fit(x[..., None], y, batch_size=config.batch_size, epochs=1, verbose=0)
            elapsed = time.time() - start
            eta = elapsed / (epoch + 1) * (config.epochs - epoch - 1)
            log(f"[reader] epoch {epoch + 1}/{config.epochs}: loss {history.history['loss'][-1]:.4f} "
            f"acc {history.history['accuracy'][-1]:.4f} ({elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)")  # fmt: skip
    log(f"[reader] member with seed {config.seed} trained in {(time.time() - start) / 60:.1f} min")
    return keras_weights(model)


def drawing_workers(config: ReaderConfig) -> int:
    """Processes that draw training digits: the configured number, else all cores but the one that trains."""
    return config.workers or max(1, (os.cpu_count() or 2) - 1)


def trace_lines(images: np.ndarray, workers: int) -> list[np.ndarray]:
    """The centre line of every digit (`centre_line`), traced once for all members and epochs."""
    with ProcessPoolExecutor(workers, multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(centre_line, images, chunksize=1024))


def evaluate(reader: Reader, images: np.ndarray, labels: np.ndarray, seed: int = 99) -> dict[str, float]:
    """Accuracy on clean digits, on pen-and-photo digits, and how marks and digits are told apart."""
    rng = np.random.default_rng(seed)
    pen = np.stack([augmented_digit(images, i, rng) for i in range(len(images))])
    marks = np.stack([augmented_mark(images, rng) for _ in range(len(images) // 4)])
    clean_probs, pen_probs, mark_probs = reader(images), reader(pen), reader(marks)
    return {
        "clean_accuracy": float(np.mean(clean_probs[:, :10].argmax(1) == labels)),
        "pen_accuracy": float(np.mean(pen_probs.argmax(1) == labels)),
        "pen_rejected": float(np.mean(pen_probs.argmax(1) == NOT_A_DIGIT)),
        "marks_rejected": float(np.mean(mark_probs.argmax(1) == NOT_A_DIGIT)),
    }


def build(images: np.ndarray, labels: np.ndarray, config: ReaderConfig, out: Path = WEIGHTS, log=print) -> Reader:
    """Train on train.csv less the held-out rows, measure on the held-out rows, save to `out`."""
    from src.data import stratified_subsample

    held = np.zeros(len(labels), bool)
    held[heldout_rows(labels, min(config.heldout, len(labels) // 5))] = True
    train_x, train_y = images[~held], labels[~held]
    if config.max_rows:
        rows = stratified_subsample(train_y, config.max_rows, config.seed)
        train_x, train_y = train_x[rows], train_y[rows]
    log(f"[reader] training {config.members} member(s) on {len(train_y):,} digits ({config.epochs} epochs each); "
        f"{held.sum():,} rows held out")  # fmt: skip
    start = time.time()
    lines = trace_lines(train_x, drawing_workers(config))
    log(f"[reader] traced {len(lines):,} centre lines in {time.time() - start:.0f} s")
    members = [train(train_x, train_y, lines, dataclasses.replace(config, seed=config.seed + k), log)
               for k in range(config.members)]  # fmt: skip
    info = {"epochs": config.epochs, "rows": len(train_y), "seed": config.seed,
            "train_minutes": round((time.time() - start) / 60, 1)}  # fmt: skip
    reader = Reader(members, info)
    reader.info["heldout"] = evaluate(reader, images[held], labels[held])
    log(f"[reader] held-out rows: {json.dumps(reader.info['heldout'])}")
    reader.save(out)
    log(f"[reader] saved {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return reader
