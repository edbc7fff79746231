"""Hyperparameter search with KerasTuner over the training run's own model builder.

    python -m src.tune [--tuner hyperband|bayesian|random] [--cv K] [--max-trials N] [--max-minutes M]
                       [--preset smoke|fast|full] [--data-dir D] [--out DIR] [--overwrite]

The objective is validation accuracy on a stratified holdout (20%), or with --cv K the mean over K
folds. Running the same command again continues the search; --overwrite starts over. Writes
best_hparams.json (plain values for `python -m src.submit --hparams`), trials.csv, and prints the top 5.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src import data, model, train
from src.config import get_preset
from src.errors import DigitsError, run_cli

FILTER_CHOICES = [16, 24, 32, 48, 64, 96, 128]


def search_space(hp) -> dict[str, Any]:
    """The one definition of the search space; every default is the untuned model's value."""
    d = model.DEFAULT_HPARAMS
    blocks = hp.Int("blocks", 1, 3, default=len(d["filters"]))
    default_filters = [*d["filters"], 128, 128][:3]
    filters = [hp.Choice(f"filters_{i}", FILTER_CHOICES, default=default_filters[i]) for i in range(3)][:blocks]
    hparams = {
        "filters": filters,
        "convs_per_block": hp.Int("convs_per_block", 1, 3, default=d["convs_per_block"]),
        "kernel_size": hp.Choice("kernel_size", [3, 5], default=d["kernel_size"]),
        "down_kernel_size": hp.Choice("down_kernel_size", [3, 5], default=d["down_kernel_size"]),
        "padding": hp.Choice("padding", ["valid", "same"], default=d["padding"]),
        "dropout": hp.Float("dropout", 0.0, 0.5, step=0.05, default=d["dropout"]),
        "dense": hp.Choice("dense", [0, 64, 128, 256, 512], default=d["dense"]),
        "bn_momentum": hp.Choice("bn_momentum", [0.9, 0.99], default=d["bn_momentum"]),
        "optimizer": hp.Choice("optimizer", ["adam", "adamw", "sgd", "rmsprop"], default=d["optimizer"]),
        "learning_rate": hp.Float("learning_rate", 1e-4, 1e-2, sampling="log", default=d["learning_rate"]),
        "schedule": hp.Choice("schedule", ["onecycle", "cosine", "exponential", "constant"], default=d["schedule"]),
        "batch_size": hp.Choice("batch_size", [32, 64, 128, 256], default=d["batch_size"]),
        "aug_strength": hp.Float("aug_strength", 0.0, 2.0, step=0.25, default=d["aug_strength"]),
    }
    if model.feature_side(hparams) < 1:  # valid padding would shrink deep stacks to nothing
        hparams["padding"] = "same"
    return model.validate_hparams(hparams, "search space")


def forward_mmacs(hparams: dict[str, Any]) -> float:
    """Millions of multiply-accumulates per image in the conv and dense layers: the trial's compute cost."""
    side, channels, macs = 28, 1, 0
    for filters in hparams["filters"]:
        for _ in range(hparams["convs_per_block"]):
            if hparams["padding"] == "valid":
                side -= hparams["kernel_size"] - 1
            macs += side * side * hparams["kernel_size"] ** 2 * channels * filters
            channels = filters
        side = -(-side // 2)
        macs += side * side * hparams["down_kernel_size"] ** 2 * channels * filters
    features = side * side * channels
    macs += features * hparams["dense"] + (hparams["dense"] or features) * 10
    return macs / 1e6


class StopSearch(Exception):
    """Raised between trials when --max-minutes is spent: the search ends cleanly, trials so far are kept."""


class TimeBudget:
    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def callback(self):
        """Stops a trial's training at the deadline (its best epoch so far still counts)."""
        import keras

        budget = self

        class Deadline(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if budget.spent():
                    self.model.stop_training = True

        return Deadline()


def tuner_class(name: str):
    """KerasTuner's own tuner `name`, with run_trial replaced by the kit's fold training."""
    import keras_tuner as kt

    base = {"hyperband": kt.Hyperband, "bayesian": kt.BayesianOptimization, "random": kt.RandomSearch}[name]

    class KitTuner(base):
        def pre_create_trial(self):
            if self.budget.spent():
                raise StopSearch

        def run_trial(self, trial, images, labels, folds, job):
            hparams = search_space(trial.hyperparameters)
            trial_dir = Path(self.project_dir) / "trials" / trial.trial_id
            cost = forward_mmacs(hparams)
            if job["max_mmacs"] and cost > job["max_mmacs"]:
                # Scored 0 without training: the oracle learns the region is out of budget.
                job["log"](
                    f"[trial {trial.trial_id}] {cost:.0f}M MACs/image > --max-mmacs {job['max_mmacs']:g}: skipped"
                )
                record = {"trial": trial.trial_id, "score": 0.0, "epochs": 0, "seconds": 0.0, "hparams": hparams}
            else:
                record = score_trial(trial, hparams, trial_dir, images, labels, folds, job, self.budget)
            trial_dir.mkdir(parents=True, exist_ok=True)
            train.write_json(trial_dir / "result.json", record)
            return {"val_accuracy": record["score"]}

    return KitTuner


def score_trial(trial, hparams: dict, trial_dir: Path, images, labels, folds, job: dict, budget) -> dict:
    """Train the trial's model on each fold (the run's own protocol) and record its mean validation accuracy."""
    # Hyperband sets the epochs per bracket through these values; the kit trains from scratch.
    epochs = int(trial.hyperparameters.values.get("tuner/epochs", job["epochs"]))
    config = dataclasses.replace(job["train"], epochs=epochs, patience=epochs)
    progress = train.Progress(epochs * len(folds), job["log"])
    start = time.perf_counter()
    scores = []
    for fold in folds:
        label = f"[trial {trial.trial_id} fold {fold.fold + 1}/{len(folds)}]"
        summary = train.train_fold(images, labels, fold, hparams, config, job["augment"], trial_dir / fold.name,
                                   progress, label, (budget.callback(),))  # fmt: skip
        scores.append(summary["val_accuracy"])
        if budget.spent():
            break
    return {"trial": trial.trial_id, "score": float(np.mean(scores)), "epochs": epochs,
            "seconds": round(time.perf_counter() - start, 1), "hparams": hparams}  # fmt: skip


def holdout_fold(labels: np.ndarray, seed: int) -> train.Fold:
    from sklearn.model_selection import train_test_split

    train_index, val_index = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=seed)
    return train.Fold(seed, 0, np.sort(train_index), np.sort(val_index))


def trials_table(out: Path) -> pd.DataFrame:
    rows = []
    for path in sorted((out / "search" / "trials").glob("*/result.json")):
        record = json.loads(path.read_text())
        flat = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in record["hparams"].items()}
        rows.append({"trial": record["trial"], "score": record["score"], "epochs": record["epochs"],
                     "seconds": record["seconds"], **flat})  # fmt: skip
    return pd.DataFrame(rows).sort_values("score", ascending=False, kind="stable") if rows else pd.DataFrame()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuner", default="bayesian", choices=("hyperband", "bayesian", "random"))
    parser.add_argument("--cv", type=int, metavar="K", help="objective: mean val accuracy over K folds")
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--max-minutes", type=float, help="stop cleanly after this long; keeps what it found")
    parser.add_argument("--preset", default="smoke", help="epochs and rows per trial come from it (default smoke)")
    parser.add_argument("--epochs", type=int, help="epochs per trial (Hyperband: the most a trial gets)")
    parser.add_argument("--max-rows", type=int, help="tune on a stratified subsample of this many rows")
    parser.add_argument("--data-dir")
    parser.add_argument("--name", default="default", help="search name: output in runs/tuning/<name>/")
    parser.add_argument("--out", help="output folder (default: runs/tuning/<name>/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-mmacs", type=float, default=45.0,
                        help="skip models above this many million MACs per image (default 45, 3x the default "
                             "model; 0: no limit)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="start over instead of continuing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cv is not None and args.cv < 2:
        raise DigitsError(f"--cv {args.cv}: needs at least 2 folds")
    preset = get_preset(args.preset)
    out = Path(args.out) if args.out else Path("runs") / "tuning" / args.name
    folder, _ = data.find_or_demo(args.data_dir, Path("runs") / "demo-data")
    dataset = data.load(folder)
    rows = data.stratified_subsample(dataset.train_labels, args.max_rows or preset.train.max_rows or 10**9, 0)
    images, labels = dataset.train_images[rows], dataset.train_labels[rows]
    folds = train.make_folds(labels, args.cv, (args.seed,)) if args.cv else [holdout_fold(labels, args.seed)]

    import keras_tuner as kt
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()
    epochs = args.epochs or preset.train.epochs
    cls = tuner_class(args.tuner)
    common = {"objective": kt.Objective("val_accuracy", "max"), "directory": str(out), "project_name": "search",
              "overwrite": args.overwrite, "seed": args.seed}  # fmt: skip
    if args.tuner == "hyperband":
        tuner = cls(lambda hp: model.build_model(search_space(hp)), max_epochs=max(2, epochs), factor=3, **common)
    else:
        tuner = cls(lambda hp: model.build_model(search_space(hp)), max_trials=args.max_trials, **common)
    tuner.budget = TimeBudget(args.max_minutes)
    job = {"epochs": epochs, "train": preset.train, "augment": preset.augment, "log": print,
           "max_mmacs": args.max_mmacs}  # fmt: skip
    protocol = f"{args.cv}-fold CV" if args.cv else "20% holdout"
    print(f"tuning ({args.tuner}) on {len(labels)} rows, {protocol}, {epochs} epochs per trial, in {out}", flush=True)
    try:
        tuner.search(images, labels, folds, job)
    except StopSearch:
        print(f"--max-minutes {args.max_minutes} spent: stopping; the trials so far are kept", flush=True)
    except RuntimeError as error:  # KerasTuner gives up after repeated failed trials; their errors are above
        raise DigitsError(f"the search stopped: {error}") from None

    table = trials_table(out)
    if not table.empty:
        table.to_csv(out / "trials.csv", index=False)
    if table.empty or not (table.epochs > 0).any():
        skipped = 0 if table.empty else len(table)
        raise DigitsError(f"{out}: no trial finished ({skipped} over --max-mmacs); give the search more time or budget")
    best = json.loads((out / "search" / "trials" / str(table.trial.iloc[0]) / "result.json").read_text())
    model.validate_hparams(best["hparams"], "best trial")
    train.write_json(out / "best_hparams.json", best["hparams"])
    print(f"{len(table)} trials ({(table.epochs == 0).sum()} skipped over the compute budget); top 5:")
    print(table.head(5).to_string(index=False))
    print(f"wrote {out / 'best_hparams.json'} (score {best['score']:.5f}) and {out / 'trials.csv'}; "
          f"use it: python -m src.submit --hparams {out / 'best_hparams.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
