"""K-fold x seeds training: one model per (seed, fold), with out-of-fold probabilities and progress.

Each fold writes runs/<run-id>/seed<S>_fold<K>/: model.keras, history.csv, val_index.npy,
val_probs.npy (float32 [n_val, 10]) and fold.json (val accuracy, best epoch, seconds). A fold with a
fold.json is finished: `--resume` skips it.
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from src import augment, model
from src.config import AugmentConfig, TrainConfig
from src.files import write_atomically


@dataclass(frozen=True)
class Fold:
    seed: int
    fold: int  # 0-based
    train_index: np.ndarray  # int [n_train]
    val_index: np.ndarray  # int [n_val]

    @property
    def name(self) -> str:
        return f"seed{self.seed}_fold{self.fold}"


def make_folds(labels: np.ndarray, folds: int, seeds: tuple[int, ...]) -> list[Fold]:
    """StratifiedKFold(folds) for each seed: every seed reshuffles the split."""
    return [
        Fold(seed, k, train_index, val_index)
        for seed in seeds
        for k, (train_index, val_index) in enumerate(
            StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels)
        )
    ]


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """Prints one line per epoch with the fold's position in the run and an ETA for the whole run."""

    def __init__(self, epochs_total: int, log=print):
        self.epochs_total = epochs_total
        self.epochs_done = 0
        self.seconds = 0.0
        self.log = log

    def epoch(self, label: str, epoch: int, epochs: int, logs: dict[str, float], seconds: float) -> None:
        self.epochs_done += 1
        self.seconds += seconds
        left = max(0, self.epochs_total - self.epochs_done) * self.seconds / self.epochs_done
        self.log(
            f"{label} epoch {epoch}/{epochs} loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f} "
            f"val_acc {logs.get('val_accuracy', 0):.4f} | {format_seconds(seconds)}/epoch, ETA {format_seconds(left)}"
        )

    def skip(self, epochs: int) -> None:
        self.epochs_total -= epochs


def progress_callback(progress: Progress, label: str, epochs: int):
    import keras

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            progress.epoch(label, epoch + 1, epochs, logs or {}, time.perf_counter() - self.start)

    return EpochLine()


def fold_seed(seed: int, fold: int) -> int:
    return seed * 1000 + fold


@dataclass(frozen=True)
class Pseudo:
    """Round 2 of a semi-supervised run: where round 1's fold models left their test predictions."""

    test_images: np.ndarray  # uint8 [M, 28, 28]
    round_one: Path  # run folder of round 1: <fold>/test_probs.npy, float32 [M, 10]
    threshold: float

    def for_fold(self, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [P, 28, 28], labels int64 [P]): test images round 1's model of this fold is sure of.

        Only that model never saw this fold's validation rows, so the fold's score stays out-of-fold.
        """
        probs = np.load(self.round_one / fold.name / "test_probs.npy")
        rows, labels = pseudo_labels(probs, self.threshold)
        return self.test_images[rows], labels


def pseudo_labels(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows [P], labels int64 [P]) of the predictions probs float32 [M, 10] whose top probability >= threshold."""
    rows = np.flatnonzero(probs.max(axis=1) >= threshold)
    return rows, probs[rows].argmax(axis=1).astype(np.int64)


def train_fold(
    images: np.ndarray,
    labels: np.ndarray,
    fold: Fold,
    hparams: dict[str, Any],
    train: TrainConfig,
    aug: AugmentConfig,
    out_dir: Path,
    progress: Progress,
    label: str,
    extra_callbacks: tuple = (),
    extra: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Train one model on `fold.train_index` of images uint8 [N, 28, 28] (plus `extra` (images, labels), e.g.
    pseudo-labelled test images); save it and its OOF probabilities."""
    import keras

    seed = fold_seed(fold.seed, fold.fold)
    keras.utils.set_random_seed(seed)
    batch_size = hparams["batch_size"]
    train_x, train_y = images[fold.train_index], labels[fold.train_index]
    if extra is not None:
        train_x, train_y = np.concatenate([train_x, extra[0]]), np.concatenate([train_y, extra[1]])
    steps = augment.steps_per_epoch(len(train_y), batch_size)
    batches = augment.training_batches(train_x, train_y, batch_size, train.epochs, aug, hparams["aug_strength"],
                                       seed, train.workers)  # fmt: skip
    val_x, val_y = images[fold.val_index][..., None], labels[fold.val_index]
    net = model.compile_model(model.build_model(hparams), hparams, steps * train.epochs, steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    callbacks = fold_callbacks(out_dir, train, progress, label, extra_callbacks)
    start = time.perf_counter()
    history = net.fit(batches, epochs=train.epochs, steps_per_epoch=steps, validation_data=(val_x, val_y),
                      validation_batch_size=512, callbacks=callbacks, shuffle=False, verbose=0)  # fmt: skip
    seconds = time.perf_counter() - start
    val_probs = keep_best(net, out_dir, fold, val_x)
    val_acc = history.history["val_accuracy"]
    summary = {
        "seed": fold.seed,
        "fold": fold.fold,
        "val_accuracy": float(np.mean(val_probs.argmax(1) == val_y)),
        "best_epoch": int(np.argmax(val_acc)) + 1,
        "epochs_run": len(val_acc),
        "train_seconds": round(seconds, 1),
        "train_images_per_s": round(len(val_acc) * steps * batch_size / seconds, 1),
        "pseudo_rows": 0 if extra is None else len(extra[1]),
    }
    write_json(out_dir / "fold.json", summary)  # written last: its presence marks the fold finished
    return summary


def fold_callbacks(out_dir: Path, train: TrainConfig, progress: Progress, label: str, extra: tuple) -> list:
    """Checkpoint the best epoch, stop early, log history.csv, TensorBoard and progress."""
    import keras

    callbacks = [
        keras.callbacks.ModelCheckpoint(
            out_dir / "best.weights.h5", monitor="val_accuracy", save_best_only=True, save_weights_only=True
        ),
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=train.patience),
        keras.callbacks.CSVLogger(out_dir / "history.csv"),
        progress_callback(progress, label, train.epochs),
        *extra,
    ]
    if importlib.util.find_spec("tensorboard"):  # in requirements.txt; a bare Kaggle image may lack it
        # runs/<run>/tb/<fold>: `tensorboard --logdir runs` shows every fold of every run side by side.
        tb = keras.callbacks.TensorBoard(out_dir.parent / "tb" / out_dir.name, write_graph=False, profile_batch=0)
        callbacks.append(tb)
    return callbacks


def keep_best(net, out_dir: Path, fold: Fold, val_x: np.ndarray) -> np.ndarray:
    """Restore the best epoch's weights, save the model and its validation predictions (float32 [V, 10])."""
    best = out_dir / "best.weights.h5"
    net.load_weights(best)
    val_probs = net.predict(val_x, batch_size=512, verbose=0).astype(np.float32)
    net.save(out_dir / "model.keras")
    best.unlink()
    np.save(out_dir / "val_index.npy", fold.val_index)
    np.save(out_dir / "val_probs.npy", val_probs)
    return val_probs


def train_folds(
    images: np.ndarray,
    labels: np.ndarray,
    hparams: dict[str, Any],
    train: TrainConfig,
    aug: AugmentConfig,
    run_dir: Path,
    log=print,
    pseudo: Pseudo | None = None,
) -> list[dict[str, Any]]:
    """Train every (seed, fold) not already finished in `run_dir`; return all folds' summaries.

    With `pseudo`, each fold also trains on the test images round 1's model of that fold is sure of.
    """
    folds = make_folds(labels, train.folds, train.seeds)
    progress = Progress(len(folds) * train.epochs, log)
    summaries = []
    for i, fold in enumerate(folds, 1):
        label = f"[model {i}/{len(folds)} seed {fold.seed} fold {fold.fold + 1}/{train.folds}]"
        done = run_dir / fold.name / "fold.json"
        if done.exists():
            summary = json.loads(done.read_text())
            progress.skip(train.epochs)
            log(f"{label} finished earlier: val_acc {summary['val_accuracy']:.4f} (resume)")
        else:
            extra = pseudo.for_fold(fold) if pseudo else None
            if extra is not None:
                log(f"{label} adds {len(extra[1]):,} pseudo-labelled test images (p >= {pseudo.threshold})")
            summary = train_fold(images, labels, fold, hparams, train, aug, run_dir / fold.name, progress, label,
                                 extra=extra)  # fmt: skip
            log(f"{label} done: val_acc {summary['val_accuracy']:.4f} in {format_seconds(summary['train_seconds'])}")
        summaries.append(summary)
    return summaries


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: readers never see half a file."""
    write_atomically(path, json.dumps(value, indent=2, default=str) + "\n")


def deterministic_on_cpu() -> None:
    """Same seed and preset -> same submission on CPU (GPU kernels stay fast and nondeterministic)."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()
