"""Find, load and validate the competition's CSVs; build the demo dataset when there are none.

Images are kept as uint8 [N, 28, 28] from disk to the model: 42,000 of them take 33 MB.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from src.errors import DigitsError

ENV_VAR = "DIGITS_DATA_DIR"
SEARCH_PATHS = (
    "/kaggle/input/digit-recognizer",
    "/kaggle/input/competitions/digit-recognizer",
    "input/digit-recognizer",
)
ZIP_NAME = "digit-recognizer.zip"
SIDE = 28
PIXELS = [f"pixel{i}" for i in range(SIDE * SIDE)]


@dataclass(frozen=True)
class Dataset:
    train_images: np.ndarray  # uint8 [N, 28, 28]
    train_labels: np.ndarray  # uint8 [N]
    test_images: np.ndarray  # uint8 [M, 28, 28]
    source: str  # the folder the files came from
    hashes: dict[str, str]  # file name -> sha256 of its bytes, for the submission's metadata


def has_data(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("train.csv", "train.csv.gz", ZIP_NAME))


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder holding the data: `data_dir`, $DIGITS_DATA_DIR, Kaggle's paths, input/."""
    if data_dir is not None:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise DigitsError(f"--data-dir {folder}: no such folder")
        if not has_data(folder):
            raise DigitsError(f"--data-dir {folder}: no train.csv, train.csv.gz or {ZIP_NAME} in it")
        return folder
    candidates = [os.environ.get(ENV_VAR, ""), *SEARCH_PATHS]
    return next((Path(c) for c in candidates if c and has_data(Path(c))), None)


def find_or_demo(data_dir: str | None, demo_dir: Path, log=print) -> tuple[Path, bool]:
    """The competition data folder, or a freshly written demo dataset in `demo_dir` (second value True)."""
    folder = find_data_dir(data_dir)
    if folder is not None:
        return folder, False
    log(
        f"no competition data found (--data-dir, ${ENV_VAR}, {', '.join(SEARCH_PATHS)}): "
        f"running on the demo dataset (scikit-learn's 8x8 digits resized to 28x28) in {demo_dir}"
    )
    return write_demo(demo_dir), True


def read_bytes(folder: Path, stem: str) -> tuple[bytes, str]:
    """The raw bytes of `stem`.csv (plain, gzipped or inside Kaggle's zip) and the name they came from."""
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).is_file():
            return (folder / name).read_bytes(), name
    archive = folder / ZIP_NAME
    if archive.is_file():
        try:
            with zipfile.ZipFile(archive) as zf:
                return zf.read(f"{stem}.csv"), f"{ZIP_NAME}:{stem}.csv"
        except KeyError:
            raise DigitsError(f"{archive}: has no {stem}.csv inside") from None
        except zipfile.BadZipFile:
            raise DigitsError(f"{archive}: not a valid zip file") from None
    raise DigitsError(f"{folder}: no {stem}.csv, {stem}.csv.gz or {ZIP_NAME}")


def parse_frame(raw: bytes, name: str) -> pd.DataFrame:
    """The CSV as a DataFrame. Valid files take the fast path (every cell parsed straight to uint8);
    anything else is re-read untyped so that the checks below can name the bad line and column."""
    compression = "gzip" if name.endswith(".gz") else None
    try:
        frame = pd.read_csv(io.BytesIO(raw), compression=compression, dtype=np.uint8)
    except (ValueError, OSError, EOFError):  # a cell that is not 0-255, or a file that is no CSV at all
        frame = read_untyped(raw, name, compression)
    if frame.empty:
        raise DigitsError(f"{name}: has a header but no rows")
    return frame


def read_untyped(raw: bytes, name: str, compression: str | None) -> pd.DataFrame:
    try:
        return pd.read_csv(io.BytesIO(raw), compression=compression, low_memory=False)
    except pd.errors.EmptyDataError:
        raise DigitsError(f"{name}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DigitsError(f"{name}: cannot be read as CSV ({first})") from None


def check_columns(frame: pd.DataFrame, name: str, expected: list[str]) -> None:
    columns = [str(c) for c in frame.columns]
    if columns == expected:
        return
    if "label" in columns and "label" not in expected:
        raise DigitsError(f"{name}: has a 'label' column; test rows must hold pixels only")
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    if missing:
        raise DigitsError(f"{name}: missing column {missing[0]!r} ({len(missing)} missing in all)")
    if extra:
        raise DigitsError(f"{name}: unexpected column {extra[0]!r} ({len(extra)} extra in all)")
    raise DigitsError(f"{name}: columns are out of order; expected {expected[0]}, {expected[1]}, ...")


def to_int_array(frame: pd.DataFrame, name: str, low: int, high: int) -> np.ndarray:
    """The frame's values as uint8 after checking every cell is an integer in [low, high]."""
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_integer_dtype(values):
            continue
        numeric = pd.to_numeric(values, errors="coerce")
        bad = numeric.isna() | (numeric != np.round(numeric))
        if not bad.any():  # whole numbers written as floats (1.0) are fine; the range is checked below
            continue
        row = int(np.flatnonzero(bad.to_numpy())[0])
        cell = values.iloc[row]
        shown = repr(cell) if isinstance(cell, str) else f"{float(cell):g}"
        what = "is empty (NaN)" if pd.isna(cell) else f"{shown} is not an integer"
        raise DigitsError(f"{name}: line {row + 2}, column {column}: {what}")
    values = frame.to_numpy()
    outside = (values < low) | (values > high)
    if outside.any():
        row, col = (int(i[0]) for i in np.nonzero(outside))
        raise DigitsError(
            f"{name}: line {row + 2}, column {frame.columns[col]}: {float(values[row, col]):g} is outside {low}-{high}"
        )
    return values.astype(np.uint8)


def parse_images(frame: pd.DataFrame, name: str) -> np.ndarray:
    """uint8 [N, 28, 28] from the pixel0..pixel783 columns."""
    return to_int_array(frame[PIXELS], name, 0, 255).reshape(-1, SIDE, SIDE)


def load_train(folder: Path) -> tuple[np.ndarray, np.ndarray, str, bytes]:
    raw, name = read_bytes(folder, "train")
    frame = parse_frame(raw, name)
    check_columns(frame, name, ["label", *PIXELS])
    labels = to_int_array(frame[["label"]], name, 0, 9).ravel()
    return parse_images(frame, name), labels, name, raw


def load_test(folder: Path) -> tuple[np.ndarray, str, bytes]:
    raw, name = read_bytes(folder, "test")
    frame = parse_frame(raw, name)
    check_columns(frame, name, PIXELS)
    return parse_images(frame, name), name, raw


def load(folder: Path) -> Dataset:
    train_images, train_labels, train_name, train_raw = load_train(folder)
    test_images, test_name, test_raw = load_test(folder)
    hashes = {n: hashlib.sha256(r).hexdigest() for n, r in ((train_name, train_raw), (test_name, test_raw))}
    return Dataset(train_images, train_labels, test_images, str(folder), hashes)


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of about `n` rows with the class balance of `labels`."""
    if n >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    keep, _ = train_test_split(np.arange(len(labels)), train_size=n, stratify=labels, random_state=seed)
    return np.sort(keep)


# --- demo dataset ------------------------------------------------------------------------------


def digits_to_mnist(images_8x8: np.ndarray) -> np.ndarray:
    """scikit-learn's 8x8 digits (0-16) as MNIST-like uint8 [N, 28, 28]: a 20x20 digit centred in 28x28."""
    import cv2

    scaled = (images_8x8.astype(np.float32) * (255.0 / 16.0)).clip(0, 255)
    out = np.zeros((len(scaled), SIDE, SIDE), np.uint8)
    for i, image in enumerate(scaled):
        out[i, 4:24, 4:24] = cv2.resize(image, (20, 20), interpolation=cv2.INTER_CUBIC).clip(0, 255).round()
    return out


def write_demo(folder: Path, test_fraction: float = 0.3, seed: int = 0) -> Path:
    """Write scikit-learn's bundled digits to `folder` in Kaggle's format (train, test, sample_submission)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = digits_to_mnist(bunch.images)
    order = np.random.default_rng(seed).permutation(len(images))
    n_test = int(len(images) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    folder.mkdir(parents=True, exist_ok=True)
    train_frame = pd.DataFrame(images[train].reshape(len(train), -1), columns=PIXELS)
    train_frame.insert(0, "label", bunch.target[train])
    train_frame.to_csv(folder / "train.csv", index=False)
    pd.DataFrame(images[test].reshape(len(test), -1), columns=PIXELS).to_csv(folder / "test.csv", index=False)
    sample = pd.DataFrame({"ImageId": np.arange(1, n_test + 1), "Label": 0})
    sample.to_csv(folder / "sample_submission.csv", index=False)
    return folder
