"""Reports from a real (small) run: numbers that must agree with the predictions, and every promised plot."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from src import ensemble, report
from src.errors import DigitsError


def test_report_writes_every_png_and_a_page(demo_run, tmp_path):
    page = report.make_report(demo_run, tmp_path / "report")
    for name in report.PNGS:
        path = tmp_path / "report" / name
        pixels = np.asarray(Image.open(path).convert("L"), float)  # fails on anything but an image
        assert min(pixels.shape) >= 200, name
        assert pixels.std() > 10 and 0.005 < (pixels < 128).mean() < 0.9, name  # drawn on: neither blank nor black
    text = page.read_text()
    assert all(f'src="{name}"' in text for name in report.PNGS) and "CV accuracy" in text


def test_confusion_matrix_sums_to_n_with_correct_predictions_on_the_diagonal(demo_run):
    _, _, labels, probs = report.load_run(demo_run)
    predicted = probs.argmax(1)
    matrix = report.confusion(labels, predicted)
    assert matrix.sum() == len(labels)
    assert np.trace(matrix) == (predicted == labels).sum()
    np.testing.assert_array_equal(matrix.sum(1), np.bincount(labels, minlength=10))


def test_class_table_metrics_are_in_range(demo_run):
    _, _, labels, probs = report.load_run(demo_run)
    table = report.class_table(labels, probs)
    assert list(table.digit) == list(range(10)) and table.support.sum() == len(labels)
    assert table.auc.between(0, 1).all() and table.precision.between(0, 1).all()
    assert table.auc.mean() > 0.7  # a trained model ranks its own class well above chance


def test_confident_mistakes_are_wrong_and_sorted():
    labels = np.array([0, 1, 2, 3])
    probs = np.eye(10)[[0, 2, 3, 1]] * np.array([[0.9], [0.6], [0.95], [0.7]])
    worst = report.confident_mistakes(labels, probs, 10)
    assert list(worst) == [2, 3, 1]


def test_latest_run_without_runs_says_how_to_make_one(tmp_path):
    with pytest.raises(DigitsError, match="python -m src.submit --preset fast"):
        ensemble.latest_run(tmp_path)
