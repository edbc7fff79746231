"""K-fold x seeds training: one model per (seed, fold), with out-of-fold probabilities and progress.

Each fold writes runs/<run-id>/seed<S>_fold<K>/: model.keras, history.csv, val_index.npy,
val_probs.npy (float32 [n_val, 10]) and fold.json (val accuracy, the epoch it peaked, seconds). A fold with a
fold.json is finished: `--resume` skips it.

Each epoch is validated on a fixed stratified sample of the fold's validation rows (TrainConfig.epoch_val_rows:
history.csv's val_accuracy, early stopping, the progress line); the fold's model is then scored on all of them
(fold.json's val_accuracy, val_probs.npy: the CV).

A fold keeps its last epoch's weights, never the epoch with the best validation accuracy: choosing an epoch by
the very rows that score it would flatter the out-of-fold CV (by 0.02 points on `fast`, README), and every
schedule anneals the learning rate to its last step anyway.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from src import augment, data, model, precision
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
    """Prints one line per epoch with the fold's position in the run and an ETA for the whole run.

    The ETA counts images, not epochs: an epoch of a pseudo-label round (train + most test rows) takes about
    twice as long as one of round 1.
    """

    def __init__(self, images_total: float, log=print):
        self.images_total = images_total
        self.images_done = 0
        self.seconds = 0.0
        self.log = log

    def epoch(self, label: str, epoch: int, epochs: int, logs: dict[str, float], seconds: float, images: int) -> None:
        self.images_done += images
        self.seconds += seconds
        left = max(0.0, self.images_total - self.images_done) * self.seconds / max(1, self.images_done)
        self.log(
            f"{label} epoch {epoch}/{epochs} loss {logs.get('loss', 0):.4f} acc {logs.get('accuracy', 0):.4f} "
            f"val_acc {logs.get('val_accuracy', 0):.4f} | {format_seconds(seconds)}/epoch, ETA {format_seconds(left)}"
        )

    def skip(self, images: float) -> None:
        """A fold finished earlier (--resume) or stopped early: its images are no longer to come."""
        self.images_total -= images


def progress_callback(progress: Progress, label: str, epochs: int, images_per_epoch: int):
    import keras

    class EpochLine(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.start
            progress.epoch(label, epoch + 1, epochs, logs or {}, seconds, images_per_epoch)

    return EpochLine()


PSEUDO_SHARE = 0.95  # of the test images sure enough at p >= 0.99 to join round 2 (measured: 26,433-26,931)


def rounds(train: TrainConfig) -> int:
    """Training rounds of a run: two when round 2 adds pseudo-labelled test images."""
    return 2 if train.pseudo else 1


def round_two(train: TrainConfig) -> TrainConfig:
    """What round 2 of a pseudo-label run trains with: its own number of epochs."""
    return dataclasses.replace(train, epochs=train.pseudo_epochs or train.epochs)


def each_round(train: TrainConfig) -> list[TrainConfig]:
    """What each training round of a run trains with: round 1, then round 2 when there are pseudo-labels."""
    return [train, round_two(train)][: rounds(train)]


def run_rows(train: TrainConfig, n_train: int) -> int:
    """train.csv rows a run uses (a stratified subsample when max_rows is set)."""
    return min(train.max_rows or n_train, n_train)


def planned_fold_images(train: TrainConfig, fold_rows: float, n_test: int) -> float:
    """Images one fold trains on in one round if it never stops early.

    `n_test`: the test images round 2 may add (0 in round 1); PSEUDO_SHARE of them are expected to join.
    """
    return train.epochs * (fold_rows + PSEUDO_SHARE * n_test)


def planned_images(train: TrainConfig, n_train: int, n_test: int, final_models: int = 1) -> float:
    """Images a whole run trains on if it never stops early; round 2 of a pseudo-label run is estimated.

    `final_models`: models trained on each fold of the final round (1 + the extra models).
    """
    fold_rows = run_rows(train, n_train) * (train.folds - 1) / train.folds
    per_round = [planned_fold_images(r, fold_rows, n) for r, n in zip(each_round(train), (0, n_test))]
    return train.folds * len(train.seeds) * (sum(per_round) + (final_models - 1) * per_round[-1])


def epoch_images(train_rows: int, batch_size: int) -> int:
    """Images one epoch trains on: whole batches, the last one topped up (see augment.steps_per_epoch)."""
    return augment.steps_per_epoch(train_rows, batch_size) * batch_size


def fold_seed(seed: int, fold: int) -> int:
    return seed * 1000 + fold


def epoch_validation(fold: Fold, labels: np.ndarray, rows: int) -> np.ndarray:
    """The rows of `fold.val_index` scored after every epoch: a fixed stratified sample of `rows` (0: all)."""
    if not rows:
        return fold.val_index
    sample = data.stratified_subsample(labels[fold.val_index], rows, fold_seed(fold.seed, fold.fold))
    return fold.val_index[sample]


@dataclass(frozen=True)
class Pseudo:
    """Round 2 of a semi-supervised run: where round 1's fold models left their test predictions."""

    test_images: np.ndarray  # uint8 [M, 28, 28]
    round_one: Path  # run folder of round 1: <fold>/test_probs.npy, float32 [M, 10]
    threshold: float
    left_out: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # train rows round 2 never trains on
    warm: bool = False  # each fold starts from round 1's model of the same fold (TrainConfig.warm)

    def start_from(self, name: str) -> Path | None:
        """The round-1 fold folder whose model fold `name` fine-tunes (warm), or None: it starts fresh.

        An extra model (m1_seed0_fold0, ...) has no round-1 twin, so it always starts fresh.
        """
        folder = self.round_one / name
        return folder if self.warm and (folder / "model.keras").is_file() else None

    def cleaned(self, fold: Fold) -> Fold:
        """The fold without the left-out rows in its training part; its validation rows stay, all of them."""
        return dataclasses.replace(fold, train_index=np.setdiff1d(fold.train_index, self.left_out))

    def for_fold(self, fold: Fold) -> tuple[np.ndarray, np.ndarray]:
        """(images uint8 [P, 28, 28], labels int64 [P]): test images round 1's model of this fold is sure of.

        Only that model never saw this fold's validation rows, so the fold's score stays out-of-fold.
        """
        probs = np.load(self.round_one / fold.name / "test_probs.npy")
        rows, labels = pseudo_labels(probs, self.threshold)
        return self.test_images[rows], labels


WARM_LR_SHARE = 0.5  # of the peak learning rate a warm start climbs back to: the model is trained; Adam's state is not


def warm_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a fine-tune: the same schedule (its warm-up included) to a lower peak."""
    return {**hparams, "learning_rate": hparams["learning_rate"] * WARM_LR_SHARE}


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
    planned: float | None = None,
    start_from: Path | None = None,
) -> dict[str, Any]:
    """Train one model on `fold.train_index` of images uint8 [N, 28, 28] (plus `extra` (images, labels), e.g.
    pseudo-labelled test images); save it and its OOF probabilities.

    `planned`: the images `progress` counted for this fold (an estimate for round 2); None: exactly its epochs.
    `start_from`: a finished fold folder of the same model whose weights this one fine-tunes (warm_hparams).
    """
    import keras

    seed = fold_seed(fold.seed, fold.fold)
    keras.utils.set_random_seed(seed)
    batch_size = hparams["batch_size"]
    train_x, train_y = images[fold.train_index], labels[fold.train_index]
    if extra is not None:
        train_x, train_y = np.concatenate([train_x, extra[0]]), np.concatenate([train_y, extra[1]])
    steps = augment.steps_per_epoch(len(train_y), batch_size)
    if planned is not None:
        progress.skip(planned - train.epochs * steps * batch_size)  # the plan's estimate -> this fold's real epochs
    batches = augment.training_batches(train_x, train_y, batch_size, train.epochs, aug, hparams["aug_strength"],
                                       seed, train.workers)  # fmt: skip
    val_x, val_y = images[fold.val_index][..., None], labels[fold.val_index]
    each_epoch = epoch_validation(fold, labels, train.epoch_val_rows)
    computes_in = precision.resolve(train.precision)
    net = model.build_model(hparams, computes_in)
    schedule = hparams
    if start_from is not None:
        net.load_weights(start_from / "model.keras")  # weights are float32 whatever precision either computes in
        schedule = warm_hparams(hparams)
    net = model.compile_model(net, schedule, steps * train.epochs, steps, computes_in)
    out_dir.mkdir(parents=True, exist_ok=True)
    epoch_line = progress_callback(progress, label, train.epochs, steps * batch_size)
    callbacks = fold_callbacks(out_dir, train, epoch_line, extra_callbacks, ema=hparams["ema"] > 0)
    start = time.perf_counter()
    history = net.fit(batches, epochs=train.epochs, steps_per_epoch=steps,
                      validation_data=(images[each_epoch][..., None], labels[each_epoch]), validation_batch_size=512,
                      callbacks=callbacks, shuffle=False, verbose=0)  # fmt: skip
    seconds = time.perf_counter() - start
    val_probs = keep_last(net, out_dir, fold, val_x)
    val_acc = history.history["val_accuracy"]
    progress.skip((train.epochs - len(val_acc)) * steps * batch_size)  # stopped early: those epochs never come
    summary = {
        "name": out_dir.name,  # seed0_fold0, or m1_seed0_fold0 for an extra model
        "seed": fold.seed,
        "fold": fold.fold,
        "val_accuracy": float(np.mean(val_probs.argmax(1) == val_y)),
        "best_epoch": int(np.argmax(val_acc)) + 1,  # by the rows validated each epoch
        "epoch_val_rows": len(each_epoch),
        "epochs_run": len(val_acc),
        "train_seconds": round(seconds, 1),
        "train_images_per_s": round(len(val_acc) * steps * batch_size / seconds, 1),
        "precision": computes_in,
        "pseudo_rows": 0 if extra is None else len(extra[1]),
        "train_rows": len(fold.train_index),
        "warm_start": None if start_from is None else str(start_from),
    }
    write_json(out_dir / "fold.json", summary)  # written last: its presence marks the fold finished
    return summary


def fold_callbacks(out_dir: Path, train: TrainConfig, epoch_line, extra: tuple, ema: bool = False) -> list:
    """Stop early, log history.csv, TensorBoard and progress (`epoch_line`)."""
    import keras

    # With EMA, the averaged weights are swapped in before each validation (and left in at the end of fit).
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema else []
    callbacks = [
        *swap,
        keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=train.patience),  # keeps the weights it stops at
        keras.callbacks.CSVLogger(out_dir / "history.csv"),
        epoch_line,
        *extra,
    ]
    if importlib.util.find_spec("tensorboard"):  # in requirements.txt; a bare Kaggle image may lack it
        # runs/<run>/tb/<fold>: `tensorboard --logdir runs` shows every fold of every run side by side.
        tb = keras.callbacks.TensorBoard(out_dir.parent / "tb" / out_dir.name, write_graph=False, profile_batch=0)
        callbacks.append(tb)
    return callbacks


def keep_last(net, out_dir: Path, fold: Fold, val_x: np.ndarray) -> np.ndarray:
    """Save the model as training left it and its validation predictions (float32 [V, 10])."""
    val_probs = net.predict(val_x, batch_size=512, verbose=0).astype(np.float32)
    net.save(out_dir / "model.keras")
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
    progress: Progress,
    log=print,
    pseudo: Pseudo | None = None,
    prefix: str = "",
) -> list[dict[str, Any]]:
    """Train every (seed, fold) not already finished in `run_dir`; return all folds' summaries.

    With `pseudo`, each fold also trains on the test images round 1's model of that fold is sure of.
    `progress` spans the whole run (both rounds of a pseudo-label run), from train.planned_images.
    `prefix` names a further model's folders (m1_seed0_fold0, ...) beside the first model's.
    """
    folds = make_folds(labels, train.folds, train.seeds)
    n_test = len(pseudo.test_images) if pseudo else 0
    which = prefix.replace("_", " ")  # "m1 " for an extra model
    summaries = []
    for i, fold in enumerate(folds, 1):
        label = f"[{which}model {i}/{len(folds)} seed {fold.seed} fold {fold.fold + 1}/{train.folds}]"
        planned = planned_fold_images(train, len(fold.train_index), n_test)  # what planned_images counted
        out_dir = run_dir / f"{prefix}{fold.name}"
        done = out_dir / "fold.json"
        if done.exists():
            summary = json.loads(done.read_text())
            progress.skip(planned)
            log(f"{label} finished earlier: val_acc {summary['val_accuracy']:.4f} (resume)")
        else:
            extra = pseudo.for_fold(fold) if pseudo else None
            start = pseudo.start_from(out_dir.name) if pseudo else None
            if pseudo is not None:
                fold = pseudo.cleaned(fold)
                how = f", fine-tuning {start}" if start else ""
                log(f"{label} adds {len(extra[1]):,} pseudo-labelled test images (p >= {pseudo.threshold}){how}")
            summary = train_fold(images, labels, fold, hparams, train, aug, out_dir, progress, label, extra=extra,
                                 planned=planned, start_from=start)  # fmt: skip
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
