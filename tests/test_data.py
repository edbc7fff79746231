"""Loading and validating the competition's CSVs: every kind of bad input gets one clear line."""

from __future__ import annotations

import gzip
import re
import shutil
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
    assert data.find_data_dir() is None  # $DIGITS_DATA_DIR points nowhere and tmp_path has no input/
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


def test_real_train_loads_as_uint8(real_dir):
    images, labels, name, _ = data.load_train(real_dir)  # about 2 s: python -m src.bench times it
    assert images.shape == (42000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (42000,) and labels.max() == 9


def bad_csv(text: str, kind: str) -> str:
    """`text` (a CSV) with one defect of `kind`."""
    lines = text.splitlines()
    cells = lines[2].split(",")
    if kind == "float and out of range":
        cells[3], cells[9] = "1.0", "300"
    elif kind == "negative label":
        cells[0] = "-1"
    elif kind == "NaN label":
        cells[0] = ""
    elif kind == "columns out of order":
        header = lines[0].split(",")
        header[5], header[6] = header[6], header[5]
        lines[0] = ",".join(header)
    elif kind == "header only":
        return lines[0] + "\n"
    lines[2] = ",".join(cells)
    return "\n".join(lines) + "\n"


SWEEP = {
    "float and out of range": r"{name}: line 3, column pixel8: 300 is outside 0-255",
    "negative label": r"{name}: line 3, column label: -1 is outside 0-9",
    "NaN label": r"{name}: line 3, column label: is empty \(NaN\)",
    "columns out of order": r"{name}: columns are out of order",
    "header only": r"{name}: has a header but no rows",
}


def write_as(folder: Path, stem: str, text: str, container: str) -> str:
    """Write `stem`.csv as plain, gzipped or inside Kaggle's zip; the name the kit reports it by."""
    if container == "plain":
        (folder / f"{stem}.csv").write_text(text)
        return f"{stem}.csv"
    if container == "gz":
        (folder / f"{stem}.csv.gz").write_bytes(gzip.compress(text.encode()))
        return f"{stem}.csv.gz"
    with zipfile.ZipFile(folder / "digit-recognizer.zip", "a") as zf:
        zf.writestr(f"{stem}.csv", text)
    return f"digit-recognizer.zip:{stem}.csv"


@pytest.mark.parametrize("container", ["plain", "gz", "zip"])
@pytest.mark.parametrize("stem", ["train", "test"])
@pytest.mark.parametrize("kind", SWEEP)
def test_bad_input_sweep_one_line_exit_2_nothing_written(demo_dir, tmp_path, capsys, container, stem, kind):
    from src import submit
    from src.errors import run_cli

    if stem == "test" and "label" in kind:
        kind = "float and out of range"  # test.csv has no label column
    folder = tmp_path / "data"
    folder.mkdir()
    other = "test" if stem == "train" else "train"
    write_as(folder, other, (demo_dir / f"{other}.csv").read_text(), container)
    name = write_as(folder, stem, bad_csv((demo_dir / f"{stem}.csv").read_text(), kind), container)
    expected = SWEEP[kind].format(name=re.escape(name))
    if stem == "test" and kind == "float and out of range":
        expected = expected.replace("pixel8", "pixel9")  # no label column: one more pixel to the left
    out = tmp_path / "subs"
    code = run_cli(submit.main, ["--data-dir", str(folder), "--out", str(out), "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and re.search(expected, err), err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_truncated_gzip_and_missing_train_csv(demo_dir, tmp_path):
    folder = copy_demo(demo_dir, tmp_path)
    (folder / "train.csv").unlink()
    with pytest.raises(DigitsError, match="no train.csv, train.csv.gz or digit-recognizer.zip"):
        data.load(folder)
    whole = gzip.compress((demo_dir / "train.csv").read_bytes())
    (folder / "train.csv.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DigitsError, match="train.csv.gz: cannot be read as CSV"):
        data.load(folder)
