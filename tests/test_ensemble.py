"""The ensemble over folds and seeds, with test-time augmentation, from a real (small) run of the main job."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from src import data, ensemble, submit


@pytest.fixture(scope="module")
def two_seed_tta_run(demo_dir, tmp_path_factory):
    """2 seeds x 2 folds x 3 epochs with TTA on 600 demo rows: the main job, in-process."""
    root = tmp_path_factory.mktemp("seeds")
    argv = ["--data-dir", str(demo_dir), "--preset", "smoke", "--folds", "2", "--epochs", "3", "--seeds", "0", "1",
            "--max-rows", "600", "--tta", "--runs-dir", str(root / "runs"), "--out", str(root / "subs")]  # fmt: skip
    assert submit.main(argv) == 0
    return next((root / "runs").iterdir())


@pytest.mark.slow
def test_every_seed_and_fold_is_a_member(two_seed_tta_run):
    cv = json.loads((two_seed_tta_run / "cv.json").read_text())
    assert cv["models"] == 4 and cv["tta_rounds"] == 4
    assert sorted((f["seed"], f["fold"]) for f in cv["folds"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    oof = np.load(two_seed_tta_run / "oof_probs.npy")
    assert oof.shape == (600, 10) and np.allclose(oof.sum(1), 1, atol=1e-4)  # every row predicted, each seed once


@pytest.mark.slow
def test_each_fold_is_scored_by_its_last_epoch(two_seed_tta_run):
    for fold_dir in ensemble.fold_dirs(two_seed_tta_run):
        summary = json.loads((fold_dir / "fold.json").read_text())
        history = pd.read_csv(fold_dir / "history.csv")
        assert summary["best_epoch"] == int(history.val_accuracy.idxmax()) + 1
        # val_accuracy is recomputed from the saved model's predictions: the last epoch's weights.
        assert summary["val_accuracy"] == pytest.approx(history.val_accuracy.iloc[-1], abs=1e-6)


@pytest.mark.slow
def test_tta_scores_what_is_submitted(two_seed_tta_run, demo_dir):
    rows = np.load(two_seed_tta_run / "train_rows.npy")
    dataset = data.load(demo_dir)
    labels, images = dataset.train_labels[rows], dataset.train_images[rows]
    plain = ensemble.ensemble_run(two_seed_tta_run, labels, dataset.test_images, images, tta_rounds=0, log=print)
    with_tta = ensemble.ensemble_run(two_seed_tta_run, labels, dataset.test_images, images, tta_rounds=2, log=print)
    assert json.loads((two_seed_tta_run / "cv.json").read_text())["tta_rounds"] == 2
    assert not np.allclose(with_tta["test_probs"], plain["test_probs"])  # augmented copies were averaged in
    agree = np.mean(with_tta["test_probs"].argmax(1) == plain["test_probs"].argmax(1))
    assert agree > 0.75  # mild augmentation: mostly the same answers, even from these weak 3-epoch models
    oof = np.load(two_seed_tta_run / "oof_probs.npy")
    assert with_tta["cv_accuracy"] == pytest.approx(np.mean(oof.argmax(1) == labels))  # CV of the TTA probabilities


def test_a_run_without_finished_folds_is_one_clear_error(tmp_path):
    from src.errors import DigitsError

    with pytest.raises(DigitsError, match="no finished folds"):
        ensemble.ensemble_run(tmp_path, np.zeros(3, int), np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DigitsError, match="no finished folds"):
        ensemble.load_fold_models(tmp_path)
