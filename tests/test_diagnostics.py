"""Diagnostics of a real (small) run: numbers that must agree with the predictions, and every promised plot."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from src import diagnostics, ensemble, report
from src.errors import DigitsError


def test_report_writes_every_png_and_a_page(demo_run, tmp_path):
    page = diagnostics.make_report(demo_run, tmp_path / "report")
    for name in diagnostics.PNGS:
        path = tmp_path / "report" / name
        pixels = np.asarray(Image.open(path).convert("L"), float)  # fails on anything but an image
        assert min(pixels.shape) >= 200, name
        assert pixels.std() > 10 and 0.005 < (pixels < 128).mean() < 0.9, name  # drawn on: neither blank nor black
    text = page.read_text()
    assert all(f'src="{name}"' in text for name in diagnostics.PNGS) and "CV accuracy" in text


def test_confusion_matrix_sums_to_n_with_correct_predictions_on_the_diagonal(demo_run):
    _, _, labels, probs = diagnostics.load_run(demo_run)
    predicted = probs.argmax(1)
    matrix = diagnostics.confusion(labels, predicted)
    assert matrix.sum() == len(labels)
    assert np.trace(matrix) == (predicted == labels).sum()
    np.testing.assert_array_equal(matrix.sum(1), np.bincount(labels, minlength=10))


def test_class_table_metrics_are_in_range(demo_run):
    _, _, labels, probs = diagnostics.load_run(demo_run)
    table = diagnostics.class_table(labels, probs)
    assert list(table.digit) == list(range(10)) and table.support.sum() == len(labels)
    assert table.auc.between(0, 1).all() and table.precision.between(0, 1).all()
    assert table.auc.mean() > 0.7  # a trained model ranks its own class well above chance


def test_confident_mistakes_are_wrong_and_sorted():
    labels = np.array([0, 1, 2, 3])
    probs = np.eye(10)[[0, 2, 3, 1]] * np.array([[0.9], [0.6], [0.95], [0.7]])
    worst = diagnostics.confident_mistakes(labels, probs, 10)
    assert list(worst) == [2, 3, 1]


def test_latest_run_without_runs_says_how_to_make_one(tmp_path):
    with pytest.raises(DigitsError, match="python -m src.submit --preset fast"):
        ensemble.latest_run(tmp_path)


def test_label_issues_find_flipped_labels_and_rank_the_surest_first():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    probs = np.full((500, 10), 0.01)
    probs[np.arange(500), labels] = rng.uniform(0.6, 0.95, 500)  # a model that agrees with the labels...
    flipped = np.array([3, 120, 260, 499])
    probs[flipped] = 0.01
    probs[flipped, (labels[flipped] + 1) % 10] = [0.99, 0.98, 0.995, 0.97]  # ...except on rows labelled wrongly
    probs[flipped, labels[flipped]] = [0.02, 0.001, 0.03, 0.05]
    probs[50, [labels[50], 7]] = [0.30, 0.35]  # a hard row, wrongly predicted but not confidently: no issue
    probs /= probs.sum(1, keepdims=True)
    found = ensemble.label_issues(labels, probs)
    assert list(found) == [120, 3, 260, 499]  # exactly the flipped rows, least support for the label first
    table = diagnostics.issues_table(found, np.arange(500) + 1000, labels, probs)
    assert list(table.train_row) == [1120, 1003, 1260, 1499] and (table.likely == (table.label + 1) % 10).all()


def test_report_command_writes_the_page_of_the_latest_run(demo_run, tmp_path, capsys):
    assert report.main([str(demo_run), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "index.html").is_file() and (tmp_path / "r" / "label_issues.csv").is_file()
    assert "training rows whose label the out-of-fold probabilities contradict" in capsys.readouterr().out
