"""Loading and validating the competition's CSVs: every kind of bad input gets one clear line."""

from __future__ import annotations

import gzip
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from src import data
from src.errors import DigitsError


def copy_demo(demo_dir: Path, tmp_path: Path) -> Path:
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        shutil.copy(demo_dir / name, tmp_path / name)
    return tmp_path


def edit_line(path: Path, line: int, edit) -> None:
    """Apply `edit` to the list of cells on 1-based `line` of a CSV."""
    lines = path.read_text().splitlines()
    cells = lines[line - 1].split(",")
    edit(cells)
    lines[line - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


def test_demo_dataset_is_in_kaggle_format(demo_dir):
    dataset = data.load(demo_dir)
    assert dataset.train_images.dtype == np.uint8 and dataset.train_images.shape[1:] == (28, 28)
    assert dataset.test_images.shape[1:] == (28, 28)
    assert len(dataset.train_images) + len(dataset.test_images) == 1797
    assert set(np.unique(dataset.train_labels)) == set(range(10))
    assert dataset.train_images.max() == 255
    # Digits sit in the central 20x20 box, as in MNIST.
    assert dataset.train_images[:, :4].max() == 0 and dataset.train_images[:, 24:].max() == 0


def test_reads_plain_gzip_and_kaggle_zip_alike(demo_dir, tmp_path):
    plain = data.load(demo_dir)
    gz = tmp_path / "gz"
    gz.mkdir()
    for name in ("train", "test"):
        (gz / f"{name}.csv.gz").write_bytes(gzip.compress((demo_dir / f"{name}.csv").read_bytes()))
    zipped = tmp_path / "zip"
    zipped.mkdir()
    with zipfile.ZipFile(zipped / "digit-recognizer.zip", "w") as zf:
        for name in ("train.csv", "test.csv", "sample_submission.csv"):
            zf.write(demo_dir / name, name)
    for folder in (gz, zipped):
        other = data.load(folder)
        np.testing.assert_array_equal(other.train_images, plain.train_images)
        np.testing.assert_array_equal(other.train_labels, plain.train_labels)
        np.testing.assert_array_equal(other.test_images, plain.test_images)


def test_search_order_prefers_data_dir_then_env(demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(demo_dir))
    assert data.find_data_dir() == demo_dir
    other = copy_demo(demo_dir, tmp_path)
    assert data.find_data_dir(other) == other
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    assert data.find_data_dir() is None or data.find_data_dir() != Path("nowhere")
    with pytest.raises(DigitsError, match="no such folder"):
        data.find_data_dir(tmp_path / "missing")


BAD_TRAIN = [
    ("non-numeric", lambda c: c.__setitem__(5, "abc"), r"train.csv: line 3, column pixel4: 'abc' is not an integer"),
    ("nan", lambda c: c.__setitem__(5, ""), r"train.csv: line 3, column pixel4: is empty \(NaN\)"),
    ("float", lambda c: c.__setitem__(5, "1.5"), r"train.csv: line 3, column pixel4: 1.5 is not an integer"),
    ("pixel > 255", lambda c: c.__setitem__(10, "256"), r"train.csv: line 3, column pixel9: 256 is outside 0-255"),
    ("negative pixel", lambda c: c.__setitem__(10, "-1"), r"train.csv: line 3, column pixel9: -1 is outside 0-255"),
    ("label 10", lambda c: c.__setitem__(0, "10"), r"train.csv: line 3, column label: 10 is outside 0-9"),
]


@pytest.mark.parametrize("case, edit, message", BAD_TRAIN, ids=[c[0] for c in BAD_TRAIN])
def test_bad_train_cells_are_named_by_line_and_column(demo_dir, tmp_path, case, edit, message):
    folder = copy_demo(demo_dir, tmp_path)
    edit_line(folder / "train.csv", 3, edit)
    with pytest.raises(DigitsError, match=message):
        data.load(folder)


def test_missing_and_extra_columns(demo_dir, tmp_path):
    folder = copy_demo(demo_dir, tmp_path)
    edit_line(folder / "train.csv", 1, lambda c: c.__setitem__(784, "pixelX"))
    with pytest.raises(DigitsError, match="train.csv: missing column 'pixel783'"):
        data.load(folder)
    folder = copy_demo(demo_dir, tmp_path)
    path = folder / "test.csv"
    path.write_text("\n".join(line + ",0" for line in path.read_text().splitlines()) + "\n")
    edit_line(path, 1, lambda c: c.__setitem__(784, "extra"))
    with pytest.raises(DigitsError, match="test.csv: unexpected column 'extra'"):
        data.load(folder)


def test_test_rows_with_a_label_column_are_refused(demo_dir, tmp_path):
    folder = copy_demo(demo_dir, tmp_path)
    shutil.copy(folder / "train.csv", folder / "test.csv")
    with pytest.raises(DigitsError, match="test.csv: has a 'label' column"):
        data.load(folder)


def test_empty_and_header_only_files(demo_dir, tmp_path):
    folder = copy_demo(demo_dir, tmp_path)
    (folder / "train.csv").write_text("")
    with pytest.raises(DigitsError, match="train.csv: the file is empty"):
        data.load(folder)
    header = (demo_dir / "train.csv").read_text().splitlines()[0]
    (folder / "train.csv").write_text(header + "\n")
    with pytest.raises(DigitsError, match="train.csv: has a header but no rows"):
        data.load(folder)


def test_missing_test_file_and_corrupt_zip(demo_dir, tmp_path):
    folder = copy_demo(demo_dir, tmp_path)
    (folder / "test.csv").unlink()
    with pytest.raises(DigitsError, match="no test.csv, test.csv.gz or digit-recognizer.zip"):
        data.load(folder)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "digit-recognizer.zip").write_bytes(b"not a zip")
    with pytest.raises(DigitsError, match="digit-recognizer.zip: not a valid zip file"):
        data.load(broken)


def test_stratified_subsample_keeps_class_balance(demo_dir):
    labels = data.load(demo_dir).train_labels
    rows = data.stratified_subsample(labels, 500, seed=0)
    assert len(rows) == 500 and np.all(np.diff(rows) > 0)
    full = np.bincount(labels, minlength=10) / len(labels)
    part = np.bincount(labels[rows], minlength=10) / 500
    assert np.abs(full - part).max() < 0.01


def test_real_train_loads_in_under_three_seconds(real_dir):
    start = time.perf_counter()
    images, labels, name, _ = data.load_train(real_dir)
    seconds = time.perf_counter() - start
    assert images.shape == (42000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (42000,) and labels.max() == 9
    assert seconds < 3.0, f"loading {name} took {seconds:.2f}s"
