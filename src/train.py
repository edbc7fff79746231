"""K-fold x seeds training: each model on every (seed, fold), with out-of-fold probabilities and progress.

Each fold writes runs/<run-id>/seed<S>_fold<K>/ (a further model's: m1_seed<S>_fold<K>/, ...): model.keras,
history.csv, val_index.npy, val_probs.npy (float32 [n_val, 10]) and fold.json (val accuracy, the epoch it peaked,
seconds). A fold with a fold.json is finished: `--resume` skips it.

Each epoch is validated on a fixed stratified sample of the fold's validation rows (TrainConfig.epoch_val_rows:
history.csv's val_accuracy, early stopping, the progress line); the fold's model is then scored on all of them
(fold.json's val_accuracy, val_probs.npy: the CV).

A fold's models that share a training recipe (model.RECIPE; fast's two do) train at once, as one joint model on one
stream of augmented batches: each ends as it would alone, and `fast` takes a quarter less time on two cores (README).

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
from src.files import copy_folder_atomically, write_atomically


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

    `final_models`: models of each fold of the final round (1 + the extra models); with train.keep_round1 the
    first of them trains in round 1 only.
    """
    fold_rows = run_rows(train, n_train) * (train.folds - 1) / train.folds
    per_round = [planned_fold_images(r, fold_rows, n) for r, n in zip(each_round(train), (0, n_test))]
    first_model = per_round[0] if train.keep_round1 else sum(per_round)
    return train.folds * len(train.seeds) * (first_model + (final_models - 1) * per_round[-1])


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
    keep_first: bool = False  # the first model is round 1's, not trained again (TrainConfig.keep_round1)

    def start_from(self, name: str) -> Path | None:
        """The round-1 fold folder whose model fold `name` fine-tunes (warm), or None: it starts fresh.

        An extra model (m1_seed0_fold0, ...) has no round-1 twin, so it always starts fresh.
        """
        folder = self.round_one / name
        return folder if self.warm and (folder / "model.keras").is_file() else None

    def keep(self, out_dir: Path) -> dict[str, Any]:
        """The summary of round 1's fold model named like `out_dir` (seed0_fold0), copied there once as it is."""
        if not (out_dir / "fold.json").exists():
            copy_folder_atomically(self.round_one / out_dir.name, out_dir)
        return json.loads((out_dir / "fold.json").read_text())

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


def train_together(
    images: np.ndarray,
    labels: np.ndarray,
    fold: Fold,
    members: list[tuple[dict[str, Any], Path]],
    train: TrainConfig,
    aug: AugmentConfig,
    progress: Progress,
    label: str,
    extra_callbacks: tuple = (),
    extra: tuple[np.ndarray, np.ndarray] | None = None,
    planned: float | None = None,
    start_from: Path | None = None,
) -> list[dict[str, Any]]:
    """Train the (hparams, out_dir) `members`, models of one recipe (model.RECIPE), at once on one stream of
    augmented batches of `fold.train_index` (plus `extra` (images, labels), e.g. pseudo-labelled test images);
    save each model and its OOF probabilities in its out_dir; return their summaries (one model: one member).

    Several members train as one model.joint_model and stop early together (on their mean val_accuracy); each
    gets the weights, hence the model, it would get alone: the same seed builds it and it sees the same batches.
    `planned`: the images `progress` counted for each member (an estimate for round 2); None: exactly its epochs.
    `start_from`: a finished fold folder of the same model whose weights the one member fine-tunes (warm_hparams).
    """
    seed = fold_seed(fold.seed, fold.fold)
    recipe, n = members[0][0], len(members)
    batch_size = recipe["batch_size"]
    train_x, train_y = images[fold.train_index], labels[fold.train_index]
    if extra is not None:
        train_x, train_y = np.concatenate([train_x, extra[0]]), np.concatenate([train_y, extra[1]])
    steps = augment.steps_per_epoch(len(train_y), batch_size)
    if planned is not None:
        progress.skip(n * (planned - train.epochs * steps * batch_size))  # the plan's estimate -> real epochs
    batches = augment.training_batches(train_x, train_y, batch_size, train.epochs, aug, recipe["aug_strength"],
                                       seed, train.workers, outputs=n,
                                       deskew=recipe["deskew_before_augment"])  # fmt: skip
    val_x, val_y = images[fold.val_index][..., None], labels[fold.val_index]
    each_epoch = epoch_validation(fold, labels, train.epoch_val_rows)
    computes_in = precision.resolve(train.precision)
    net, nets = fresh_net([hparams for hparams, _ in members], computes_in, seed)
    schedule = recipe
    if start_from is not None:
        net.load_weights(start_from / "model.keras")  # weights are float32 whatever precision either computes in
        schedule = warm_hparams(recipe)
    net = model.compile_model(net, schedule, steps * train.epochs, steps, computes_in, outputs=n)
    for _, out_dir in members:
        out_dir.mkdir(parents=True, exist_ok=True)
    epoch_line = progress_callback(progress, label, train.epochs, n * steps * batch_size)
    callbacks = fold_callbacks(members[0][1], train, epoch_line, extra_callbacks, ema=recipe["ema"] > 0, outputs=n)
    start = time.perf_counter()
    history = net.fit(batches, epochs=train.epochs, steps_per_epoch=steps,
                      validation_data=(images[each_epoch][..., None], augment.targets(labels[each_epoch], n)),
                      validation_batch_size=512, callbacks=callbacks, shuffle=False, verbose=0)  # fmt: skip
    seconds = time.perf_counter() - start
    val_probs = keep_last(net, nets, [out_dir for _, out_dir in members], fold, val_x)
    if n > 1:  # CSVLogger wrote the members' means; each folder gets its own model's curves
        for k, (_, out_dir) in enumerate(members):
            write_history(out_dir / "history.csv", member_history(history.history, k))
    epochs_run = len(history.history["val_accuracy"])
    progress.skip(n * (train.epochs - epochs_run) * steps * batch_size)  # stopped early: those epochs never come
    summaries = []
    for k, (_, out_dir) in enumerate(members):
        val_acc = history.history["val_accuracy" if n == 1 else f"val_m{k}_accuracy"]
        summary = {
            "name": out_dir.name,  # seed0_fold0, or m1_seed0_fold0 for an extra model
            "seed": fold.seed,
            "fold": fold.fold,
            "val_accuracy": float(np.mean(val_probs[k].argmax(1) == val_y)),
            "best_epoch": int(np.argmax(val_acc)) + 1,  # by the rows validated each epoch
            "epoch_val_rows": len(each_epoch),
            "epochs_run": epochs_run,
            "train_seconds": round(seconds, 1),  # of the whole fit, shared with `trained_with`
            "train_images_per_s": round(n * epochs_run * steps * batch_size / seconds, 1),  # of all members together
            "trained_with": [other.name for _, other in members if other != out_dir],
            "precision": computes_in,
            "pseudo_rows": 0 if extra is None else len(extra[1]),
            "train_rows": len(fold.train_index),
            "warm_start": None if start_from is None else str(start_from),
        }
        write_json(out_dir / "fold.json", summary)  # written last: its presence marks the fold finished
        summaries.append(summary)
    return summaries


def fresh_net(models: list[dict[str, Any]], computes_in: str, seed: int) -> tuple[Any, list]:
    """(what fit trains, the untrained models in it): the one model of `models` (hyperparameters), or a
    model.joint_model of them. Each model's initial weights depend on `seed` only, as when it is built alone."""
    import keras

    nets = []
    for k, hparams in enumerate(models):
        keras.utils.set_random_seed(seed)
        nets.append(model.build_model(hparams, computes_in, "digits_cnn" if len(models) == 1 else f"m{k}"))
    return (nets[0] if len(nets) == 1 else model.joint_model(nets)), nets


def fold_callbacks(
    out_dir: Path, train: TrainConfig, epoch_line, extra: tuple, ema: bool = False, outputs: int = 1
) -> list:
    """Stop early, log history.csv, TensorBoard and progress (`epoch_line`); for a joint model (`outputs` > 1), of
    the means over its models (mean_metrics_callback, first)."""
    import keras

    # With EMA, the averaged weights are swapped in before each validation (and left in at the end of fit).
    swap = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if ema else []
    mean = [mean_metrics_callback(outputs)] if outputs > 1 else []
    callbacks = [
        *swap,
        *mean,
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


def mean_metrics_callback(outputs: int):
    """A callback that sets each epoch's `loss`, `accuracy`, `val_loss` and `val_accuracy` to the means over a joint
    model's outputs m0, m1, ... (Keras logs the losses' sum and no accuracy), before early stopping, CSVLogger and
    the progress line read them."""
    import keras

    class Mean(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for prefix in ("", "val_"):
                for metric in ("loss", "accuracy"):
                    parts = [logs.get(f"{prefix}m{k}_{metric}") for k in range(outputs)]
                    if all(part is not None for part in parts):
                        logs[prefix + metric] = float(np.mean(parts))

    return Mean()


def keep_last(net, nets: list, out_dirs: list[Path], fold: Fold, val_x: np.ndarray) -> list[np.ndarray]:
    """Save each of `nets` (the outputs of `net`) as training left it, and its validation predictions
    (float32 [V, 10] each, returned)."""
    probs = net.predict(val_x, batch_size=512, verbose=0)
    val_probs = [p.astype(np.float32) for p in (probs if len(nets) > 1 else [probs])]
    for each, out_dir, p in zip(nets, out_dirs, val_probs):
        each.save(out_dir / "model.keras")
        np.save(out_dir / "val_index.npy", fold.val_index)
        np.save(out_dir / "val_probs.npy", p)
    return val_probs


def member_history(history: dict[str, list[float]], k: int) -> dict[str, list[float]]:
    """Output m<k>'s own curves in a joint model's fit history, under a lone model's names (loss, val_accuracy)."""
    own = {key.replace(f"m{k}_", ""): values for key, values in history.items() if f"m{k}_" in key}
    return dict(sorted(own.items()))


def write_history(path: Path, history: dict[str, list[float]]) -> None:
    """history.csv as Keras's CSVLogger writes it: an epoch column (0-based), then each metric."""
    epochs = len(next(iter(history.values())))
    rows = [",".join(["epoch", *history])]
    rows += [",".join([str(e), *(repr(float(history[key][e])) for key in history)]) for e in range(epochs)]
    write_atomically(path, "\n".join(rows) + "\n")


def model_prefix(k: int) -> str:
    """The folder prefix of a run's k-th model: '' for the first (seed0_fold0), m1_ for the next (m1_seed0_fold0)."""
    return f"m{k}_" if k else ""


def recipe_groups(models: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of `models` grouped by their training recipe (model.RECIPE): each group trains as one model."""
    groups: dict[tuple, list[int]] = {}
    for k, hparams in enumerate(models):
        groups.setdefault(tuple(hparams[key] for key in model.RECIPE), []).append(k)
    return list(groups.values())


def train_folds(
    images: np.ndarray,
    labels: np.ndarray,
    models: list[dict[str, Any]],
    train: TrainConfig,
    aug: AugmentConfig,
    run_dir: Path,
    progress: Progress,
    log=print,
    pseudo: Pseudo | None = None,
) -> list[dict[str, Any]]:
    """Train each of `models` (hyperparameters) on every (seed, fold) not already finished in `run_dir`; return
    all their summaries. Fold by fold, the models of one recipe train together (train_together).

    The first model's folders are seed0_fold0, ..., the k-th's m<k>_seed0_fold0, ... (model_prefix).
    With `pseudo`, each fold also trains on the test images round 1's model of that fold is sure of; with
    `pseudo.keep_first`, the first model's folders are round 1's, copied.
    `progress` spans the whole run (both rounds of a pseudo-label run), from train.planned_images.
    """
    n_test = len(pseudo.test_images) if pseudo else 0
    folds = make_folds(labels, train.folds, train.seeds)
    summaries = []
    for i, fold in enumerate(folds, 1):
        where = f"model {i}/{len(folds)} seed {fold.seed} fold {fold.fold + 1}/{train.folds}"
        planned = planned_fold_images(train, len(fold.train_index), n_test)  # what planned_images counted
        dirs = [run_dir / f"{model_prefix(k)}{fold.name}" for k in range(len(models))]
        label = [f"[{model_prefix(k).replace('_', ' ')}{where}]" for k in range(len(models))]
        todo = []
        for k, out_dir in enumerate(dirs):
            if k == 0 and pseudo is not None and pseudo.keep_first:
                summaries.append(pseudo.keep(out_dir))
                log(f"{label[k]} kept from round 1: val_acc {summaries[-1]['val_accuracy']:.4f}")
            elif (out_dir / "fold.json").exists():
                summaries.append(json.loads((out_dir / "fold.json").read_text()))
                progress.skip(planned)
                log(f"{label[k]} finished earlier: val_acc {summaries[-1]['val_accuracy']:.4f} (resume)")
            else:
                todo.append(k)
        for group in fold_groups(todo, models, dirs, pseudo):
            group_label = label[group[0]][:-1] + "".join(f", with m{k}" for k in group[1:]) + "]"
            extra = pseudo.for_fold(fold) if pseudo else None
            start = pseudo.start_from(dirs[group[0]].name) if pseudo else None
            if pseudo is not None:
                how = f", fine-tuning {start}" if start else ""
                log(f"{group_label} adds {len(extra[1]):,} pseudo-labelled test images (p >= {pseudo.threshold}){how}")
            trained = train_together(images, labels, pseudo.cleaned(fold) if pseudo else fold,
                                     [(models[k], dirs[k]) for k in group], train, aug, progress, group_label,
                                     extra=extra, planned=planned, start_from=start)  # fmt: skip
            for k, summary in zip(group, trained):
                seconds = format_seconds(summary["train_seconds"])
                log(f"{label[k]} done: val_acc {summary['val_accuracy']:.4f} in {seconds}")
            summaries.extend(trained)
    return summaries


def fold_groups(
    todo: list[int], models: list[dict[str, Any]], dirs: list[Path], pseudo: Pseudo | None
) -> list[list[int]]:
    """The models `todo` of one fold, in the groups that train together: by recipe, except that a model that
    fine-tunes its round-1 model (Pseudo.start_from) trains alone, on its own schedule."""
    warm = [k for k in todo if pseudo is not None and pseudo.start_from(dirs[k].name) is not None]
    fresh = [k for k in todo if k not in warm]
    return [[k] for k in warm] + [[fresh[j] for j in group] for group in recipe_groups([models[k] for k in fresh])]


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: readers never see half a file."""
    write_atomically(path, json.dumps(value, indent=2, default=str) + "\n")


def deterministic_on_cpu() -> None:
    """Same seed and preset -> same submission on CPU (GPU kernels stay fast and nondeterministic)."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()
