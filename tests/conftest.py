"""Shared fixtures: the demo dataset (scikit-learn's digits in Kaggle's format) and the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Session and module fixtures that train or run something for several tests. pyproject runs the suite in two
# processes (pytest-xdist, --dist loadgroup): the tests of each fixture stay in one of them, so it is made once.
SHARED = ("demo_run", "demo_submission", "two_seed_tta_run")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group the tests of each SHARED fixture; put the slow tests first, so that the two processes share
    them out instead of one of them finishing the last alone."""
    for item in items:
        shared = next((name for name in SHARED if name in item.fixturenames), None)
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: file order otherwise


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from src import data

    return data.write_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """The competition data, found as the kit finds it ($DIGITS_DATA_DIR, Kaggle's paths, input/digit-recognizer)."""
    from src import data

    folder = data.find_data_dir()
    if folder is None:
        pytest.skip("no competition data: set DIGITS_DATA_DIR or put Kaggle's files in input/digit-recognizer/")
    return folder


@pytest.fixture(scope="session")
def real_slice(real_dir, tmp_path_factory) -> Path:
    """A small stratified slice of the real train.csv (1,500 rows) and test.csv (300 rows), in Kaggle's format.

    Lives in a temporary folder only: the competition data is never copied into the repository.
    """
    from src import data

    train_images, train_labels, _, _ = data.load_train(real_dir)
    test_images, _, _ = data.load_test(real_dir)
    rows = data.stratified_subsample(train_labels, 1500, 0)
    folder = tmp_path_factory.mktemp("real_slice")
    write_kaggle(folder, train_images[rows], train_labels[rows], test_images[:300])
    return folder


def write_kaggle(folder: Path, train_images, train_labels, test_images) -> Path:
    import pandas as pd

    from src.data import PIXELS

    train = pd.DataFrame(train_images.reshape(len(train_images), -1), columns=PIXELS)
    train.insert(0, "label", train_labels)
    train.to_csv(folder / "train.csv", index=False)
    pd.DataFrame(test_images.reshape(len(test_images), -1), columns=PIXELS).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture(scope="session")
def demo_run(demo_dir, tmp_path_factory) -> Path:
    """A finished small run on the demo dataset (2 folds x 8 epochs), for reports, baselines and OCR.

    8 epochs make it a trained model (CV 0.83, mean one-vs-rest AUC 0.99, 16 s): at 3 its CV was 0.16, near chance,
    and the AUC 0.70 passed or failed the diagnostics' check by the CPU's rounding.
    """
    from src import submit

    root = tmp_path_factory.mktemp("demo_run")
    argv = ["--data-dir", str(demo_dir), "--preset", "smoke", "--folds", "2", "--epochs", "8",
            "--runs-dir", str(root / "runs"), "--out", str(root / "subs")]  # fmt: skip
    assert submit.main(argv) == 0
    return next((root / "runs").iterdir())
