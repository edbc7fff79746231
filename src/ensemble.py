"""Average the fold models' probabilities (over folds and seeds), optionally with test-time augmentation.

Reads the fold folders that src/train.py wrote and adds, in the run folder:
oof_probs.npy (float32 [N, 10], each train row predicted by the models that never saw it),
test_probs.npy (float32 [M, 10]) and cv.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from src import augment, model
from src.config import AugmentConfig
from src.errors import DigitsError
from src.files import write_atomically


def predict_probs(net, images: np.ndarray, tta_rounds: int = 0, aug: AugmentConfig | None = None, seed: int = 0):
    """float32 [N, 10] for images uint8 [N, 28, 28]; with TTA, averaged with `tta_rounds` mildly augmented copies."""
    probs = net.predict(images[..., None], batch_size=512, verbose=0).astype(np.float64)
    if tta_rounds:
        # Half-strength affine only: TTA should look like the test set, not like hard training samples.
        augmenter = augment.Augmenter(AugmentConfig(rotate_deg=(aug or AugmentConfig()).rotate_deg), strength=0.5)
        for r in range(tta_rounds):
            shifted = augmenter(images, augment.batch_seed(seed, 10_000 + r))
            probs += net.predict(shifted[..., None], batch_size=512, verbose=0)
        probs /= tta_rounds + 1
    return probs.astype(np.float32)


def fold_dirs(run_dir: Path) -> list[Path]:
    """The finished fold models of a run: seed0_fold0, ... and an extra model's m1_seed0_fold0, ..."""
    return sorted(p.parent for p in run_dir.glob("*seed*_fold*/fold.json"))


def latest_run(runs_dir: Path) -> Path:
    """The one "latest run" finder: the run folder under `runs_dir` whose cv.json (its finish marker) is newest."""
    finished = sorted(p.parent for p in runs_dir.glob("*/cv.json"))
    if not finished:
        raise DigitsError(f"{runs_dir}: no finished run (with cv.json); train one: python -m src.submit --preset fast")
    return max(finished, key=lambda p: (p / "cv.json").stat().st_mtime)


def load_model(fold_dir: Path, precision: str = "float32"):
    """The one loader of a fold's trained model, computing in `precision` (see src/precision.py)."""
    import keras

    path = fold_dir / "model.keras"
    if not path.is_file():
        raise DigitsError(f"{fold_dir}: no model.keras; is the fold finished?")
    net = keras.models.load_model(path, custom_objects=model.custom_objects(), compile=False)  # predicting: no loss
    return with_precision(net, precision)


def with_precision(net, precision: str):
    """The same model and weights computing in `precision`, whatever it was trained in; the softmax stays float32."""
    import keras

    dtype = model.compute_dtype(precision)
    if all(layer.dtype_policy.name == dtype for layer in net.layers if layer.name not in ("image", "probs")):
        return net

    def clone(layer):
        config = layer.get_config()
        if layer.name != "probs":
            config["dtype"] = dtype
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(net, clone_function=clone)
    twin.set_weights(net.get_weights())
    return twin


def load_fold_models(run_dir: Path, max_models: int | None = None) -> list:
    """The finished fold models of a run (at most `max_models`), for reading digits outside a run."""
    dirs = fold_dirs(run_dir)[:max_models]
    if not dirs:
        raise DigitsError(f"{run_dir}: no finished folds (seed*_fold*/fold.json); is it a run folder?")
    return [load_model(d) for d in dirs]


def average_probs(models: list, images: np.ndarray) -> np.ndarray:
    """float32 [N, 10]: the models' mean probabilities for images uint8 [N, 28, 28]."""
    if len(images) == 0:
        return np.zeros((0, 10), np.float32)
    return np.mean([predict_probs(m, images) for m in models], axis=0).astype(np.float32)


def fold_predictions(
    fold_dir: Path,
    seed: int,
    test_images: np.ndarray,
    train_images: np.ndarray | None,
    tta_rounds: int,
    aug: AugmentConfig | None,
    precision: str = "float32",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(val_index [V], val probs float32 [V, 10], test probs float32 [M, 10]) of one fold's model.

    Without TTA the validation probabilities saved at training time are used; with TTA they are recomputed
    (that needs `train_images`) so that the CV score measures what is submitted.
    """
    net = load_model(fold_dir, precision)
    val_index = np.load(fold_dir / "val_index.npy")
    if tta_rounds and train_images is not None:
        val_probs = predict_probs(net, train_images[val_index], tta_rounds, aug, seed=seed)
    else:
        val_probs = np.load(fold_dir / "val_probs.npy")
    test_probs = predict_probs(net, test_images, tta_rounds, aug, seed=seed)
    np.save(fold_dir / "test_probs.npy", test_probs)
    return val_index, val_probs, test_probs


def ensemble_run(
    run_dir: Path,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    train_images: np.ndarray | None = None,
    tta_rounds: int = 0,
    aug: AugmentConfig | None = None,
    log=print,
    precision: str = "float32",
) -> dict[str, Any]:
    """Predict the test set with every finished fold model and average; score the out-of-fold predictions.

    Writes oof_probs.npy, test_probs.npy and, last, cv.json (the run's finish marker).
    """
    dirs = fold_dirs(run_dir)
    if not dirs:
        raise DigitsError(f"{run_dir}: no finished folds (seed*_fold*/fold.json)")
    oof_sum = np.zeros((len(train_labels), 10), np.float64)
    oof_count = np.zeros(len(train_labels), np.int64)
    test_sum = np.zeros((len(test_images), 10), np.float64)
    for i, fold_dir in enumerate(dirs, 1):
        val_index, val_probs, test_probs = fold_predictions(fold_dir, i, test_images, train_images, tta_rounds, aug,
                                                          precision)  # fmt: skip
        oof_sum[val_index] += val_probs
        oof_count[val_index] += 1
        test_sum += test_probs
        val_acc = np.mean(val_probs.argmax(1) == train_labels[val_index])
        log(f"[ensemble {i}/{len(dirs)}] {fold_dir.name}: val_acc {val_acc:.4f}")
    covered = oof_count > 0
    oof = (oof_sum / np.maximum(oof_count, 1)[:, None]).astype(np.float32)
    test = (test_sum / len(dirs)).astype(np.float32)
    cv = {
        "cv_accuracy": float(np.mean(oof[covered].argmax(1) == train_labels[covered])),
        "oof_rows": int(covered.sum()),
        "models": len(dirs),
        "tta_rounds": tta_rounds,
        "precision": precision,
        "folds": [json.loads((d / "fold.json").read_text()) for d in dirs],
    }
    np.save(run_dir / "oof_probs.npy", oof)
    np.save(run_dir / "test_probs.npy", test)
    write_atomically(run_dir / "cv.json", json.dumps(cv, indent=2) + "\n")  # written last: marks the run finished
    return {"oof_probs": oof, "test_probs": test, **cv}


def label_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Indices of rows whose given label the out-of-fold probabilities float [N, 10] contradict, surest first.

    Confident learning (Northcutt et al., 2021; cleanlab's confident joint): a class's threshold is the
    mean probability of that class over the rows labelled with it; a row's likely class is its most
    probable class among those it clears the threshold of. A row whose likely class is not its label is
    an issue; they are ranked by how little probability the given label gets.
    """
    thresholds = np.array([probs[labels == k, k].mean() if (labels == k).any() else 1.0 for k in range(10)])
    cleared = np.where(probs >= thresholds, probs, -1.0)
    likely = cleared.argmax(1)
    issue = (cleared.max(1) >= 0) & (likely != labels)
    rows = np.flatnonzero(issue)
    return rows[np.argsort(probs[rows, labels[rows]], kind="stable")]
