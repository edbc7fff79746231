"""Hyperparameter search with KerasTuner, scored the way the target preset's run scores: on one machine or many.

    python -m src.tune --preset fast [--tuner bayesian|hyperband|random] [--folds N] [--max-trials N]
                       [--max-minutes M] [--workers N] [--data-dir D] [--out DIR] [--overwrite]

A trial trains as the preset's run trains, on the preset's own K-fold split (the first N of its folds,
default 1), rows, epochs, schedule and augmentation, so its score predicts the run's CV; Hyperband's
top rung is the preset's epochs. Running the same command again continues the search; --overwrite
starts over. Writes trials.csv, best_hparams.json (for `python -m src.submit --hparams`), the top 5.

Many machines, on KerasTuner's own engine: run the same command everywhere with
KERASTUNER_TUNER_ID (`chief` on one machine, `tuner1`, `tuner2`, ... on the others),
KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (the chief's address). The chief serves the oracle
and writes the results; workers run trials. `--workers N` starts a chief and N workers here, each
pinned to its share of the cores, and restarts a worker that dies (its trial is run again).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src import data, files, model, train
from src.config import get_preset
from src.errors import DigitsError, run_cli

FILTER_CHOICES = [16, 24, 32, 48, 64, 96, 128]


def search_space(hp, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one definition of the search space; its defaults are `base` (the preset's model), else the untuned model."""
    d = base or model.DEFAULT_HPARAMS
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
        "deskew": hp.Boolean("deskew", default=d["deskew"]),
        "ema": d["ema"],  # not searched: the preset's choice carries over
    }
    # Not searched either: carried over where the trial deskews.
    hparams["deskew_before_augment"] = d["deskew_before_augment"] and hparams["deskew"]
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


class TimeBudget:
    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60 * minutes

    def spent(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def callback(self):
        """Stops a trial's training at the deadline (the epoch it stops at counts)."""
        import keras

        budget = self

        class Deadline(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if budget.spent():
                    self.model.stop_training = True

        return Deadline()


# --- the search: KerasTuner's oracles and engine, the kit's training as the trial -------------------------


def role() -> str:
    """`chief` (serves the oracle), `worker` (runs trials for a chief), or `single` (both, in this process)."""
    from keras_tuner.src.distribute import utils

    if not utils.has_chief_oracle():
        return "single"
    return "chief" if utils.is_chief_oracle() else "worker"


def oracle_for(name: str, budget: TimeBudget, max_trials: int, epochs: int, seed: int):
    """KerasTuner's oracle `name`. Its first trial is the space's defaults (the preset's own model: the
    baseline every other trial is compared with, on the same protocol); once the --max-minutes budget is
    spent it hands out no new trial. Stopping in the oracle (not in a worker) lets the chief tell every
    worker to stop, and exit itself.
    """
    import keras_tuner as kt

    base = {"hyperband": kt.oracles.HyperbandOracle, "bayesian": kt.oracles.BayesianOptimizationOracle,
            "random": kt.oracles.RandomSearchOracle}[name]  # fmt: skip

    class BudgetOracle(base):
        def populate_space(self, trial_id):
            if budget.spent():
                return {"status": "STOPPED", "values": None}
            if not self.trials and name != "hyperband":  # Hyperband sets each trial's epochs itself
                return {"status": "RUNNING", "values": self.hyperparameters.values.copy()}
            return super().populate_space(trial_id)

    objective = kt.Objective("val_accuracy", "max")
    seed += 1  # KerasTuner takes seed 0 for "no seed" and would draw a random one
    if name == "hyperband":
        return BudgetOracle(objective, max_epochs=max(2, epochs), factor=3, seed=seed)
    if name == "bayesian":  # a budgeted search: the Gaussian process starts guiding after a quarter of it
        return BudgetOracle(objective, max_trials=max_trials, seed=seed, num_initial_points=max(2, max_trials // 4))
    return BudgetOracle(objective, max_trials=max_trials, seed=seed)


def make_tuner(oracle, base: dict[str, Any], out: Path, overwrite: bool, log):
    """A KerasTuner Tuner whose trial is the kit's fold training (`score_trial`) over `search_space(hp, base)`."""
    import keras_tuner as kt

    class KitTuner(kt.Tuner):
        def run_trial(self, trial, images, labels, folds, job):
            hparams = search_space(trial.hyperparameters, base)
            trial_dir = Path(self.project_dir) / "trials" / trial.trial_id
            log(f"[{self.tuner_id}] trial {trial.trial_id} starts")
            cost = forward_mmacs(hparams)
            started = time.time()
            if job["max_mmacs"] and cost > job["max_mmacs"]:
                # Scored 0 without training: the oracle learns the region is out of budget.
                log(f"[trial {trial.trial_id}] {cost:.0f}M MACs/image > --max-mmacs {job['max_mmacs']:g}: skipped")
                score, epochs = 0.0, 0
            else:
                score, epochs = score_trial(trial, hparams, trial_dir, images, labels, folds, job)
            log(f"[{self.tuner_id}] trial {trial.trial_id} ends: val_accuracy {score:.5f}")
            return {"val_accuracy": score, "epochs": epochs, "seconds": round(time.time() - started, 1),
                    "finished_at": time.time()}  # fmt: skip

    return KitTuner(oracle, hypermodel=lambda hp: model.build_model(search_space(hp, base)),
                    directory=str(out), project_name="search", overwrite=overwrite)  # fmt: skip


def score_trial(trial, hparams: dict, trial_dir: Path, images, labels, folds, job: dict) -> tuple[float, int]:
    """(mean validation accuracy, epochs) of the trial's model trained on each fold by the run's own code."""
    # Hyperband sets the epochs per bracket through these values; the kit trains from scratch.
    epochs = int(trial.hyperparameters.values.get("tuner/epochs", job["epochs"]))
    config = dataclasses.replace(job["train"], epochs=epochs, patience=epochs)
    planned = sum(epochs * train.epoch_images(len(f.train_index), hparams["batch_size"]) for f in folds)
    progress = train.Progress(planned, job["log"])
    scores = []
    for fold in folds:
        label = f"[trial {trial.trial_id} fold {fold.fold + 1}/{len(folds)}]"
        [summary] = train.train_together(images, labels, fold, [(hparams, trial_dir / fold.name)], config,
                                         job["augment"], progress, label, (job["budget"].callback(),))  # fmt: skip
        scores.append(summary["val_accuracy"])
        if job["budget"].spent():
            break
    return float(np.mean(scores)), epochs


def preset_folds(labels: np.ndarray, folds: int, used: int, seed: int) -> list[train.Fold]:
    """The first `used` folds of the run's own stratified K-fold split (the same rows the run validates on)."""
    return train.make_folds(labels, folds, (seed,))[:used]


# --- results: read from the oracle (the chief's copy), so they need no folder shared with workers ------------


def trials_table(oracle, base: dict[str, Any]) -> pd.DataFrame:
    """One row per finished trial, best first: trial, status, score, epochs, seconds, hyperparameters."""
    rows = []
    for trial in oracle.trials.values():
        if trial.status not in ("COMPLETED", "FAILED", "INVALID"):
            continue
        # A failed trial has no metrics; its error is in trial_<id>/trial.json and the worker's output.
        metric = {name: trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None
                  for name in ("epochs", "seconds", "finished_at")}  # fmt: skip
        hparams = search_space(trial.hyperparameters, base)
        flat = {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in hparams.items()}
        rows.append({"trial": trial.trial_id, "status": trial.status, "score": trial.score,
                     "epochs": metric["epochs"], "seconds": metric["seconds"],
                     "finished_at": metric["finished_at"], **flat})  # fmt: skip
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).sort_values(["score", "trial"], ascending=[False, True], na_position="last")


def write_results(oracle, base: dict[str, Any], table: pd.DataFrame, out: Path) -> dict:
    """trials.csv and best_hparams.json; the best trial's record. Refuses when no trial trained."""
    if not table.empty:
        files.write_atomically(out / "trials.csv", table.to_csv(index=False))
    trained = table[(table.status == "COMPLETED") & (table.epochs > 0)] if not table.empty else table
    if trained.empty:
        skipped = 0 if table.empty else int((table.epochs == 0).sum())
        raise DigitsError(f"{out}: no trial finished ({skipped} over --max-mmacs); give the search more time or budget")
    best = trained.iloc[0]
    hparams = model.validate_hparams(search_space(oracle.trials[best.trial].hyperparameters, base), "best trial")
    train.write_json(out / "best_hparams.json", hparams)
    return {"trial": best.trial, "score": float(best.score), "hparams": hparams}


def throughput(table: pd.DataFrame) -> str:
    """Trials trained per hour: trained trials over the time from the first one's start to the last one's end."""
    done = table[(table.status == "COMPLETED") & (table.epochs > 0)] if not table.empty else table
    if len(done) < 2:
        return ""
    span = done.finished_at.max() - (done.finished_at - done.seconds).min()
    return f"{len(done)} trials in {span / 60:.1f} min: {len(done) / span * 3600:.0f} trials/hour"


# --- many tuners on this machine -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def core_shares(workers: int) -> list[list[int]]:
    """The cores each worker is pinned to: an even split, one core each when there are more workers than cores."""
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // workers)
    return [[cores[(k * per + i) % len(cores)] for i in range(per)] for k in range(workers)]


class LocalTuner:
    """One `python -m src.tune` process of a local chief-and-workers search; its output lines prefixed, and logged."""

    def __init__(self, argv: list[str], tuner_id: str, port: int, cores: list[int] | None, logs: Path):
        self.argv, self.tuner_id, self.port, self.cores, self.logs = argv, tuner_id, port, cores, logs
        self.restarts = 0
        self.process = self.start()

    def start(self) -> subprocess.Popen:
        env = {**os.environ, "KERASTUNER_TUNER_ID": self.tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
               "KERASTUNER_ORACLE_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}  # fmt: skip
        if self.cores:
            env.update(TF_NUM_INTRAOP_THREADS=str(len(self.cores)), TF_NUM_INTEROP_THREADS="1")
        cores = self.cores
        process = subprocess.Popen([sys.executable, "-m", "src.tune", *self.argv], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True,
                                   preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)  # fmt: skip
        threading.Thread(target=self.relay, args=(process,), daemon=True).start()
        return process

    def relay(self, process: subprocess.Popen) -> None:
        with open(self.logs / f"{self.tuner_id}.log", "a") as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                if not line.startswith(("I0000", "W0000", "E0000", "WARNING: All log")):
                    print(f"{self.tuner_id:>7} | {line}", end="", flush=True)


def run_local(args: argparse.Namespace, argv: list[str], out: Path) -> int:
    """A chief and `args.workers` workers on this machine; a worker that dies is started again with its id."""
    passed = strip_option(argv, "--workers")
    port = free_port()
    if args.overwrite:  # a new search: earlier logs would only mislead
        shutil.rmtree(out / "logs", ignore_errors=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    chief = LocalTuner(passed, "chief", port, None, out / "logs")
    worker_argv = [a for a in passed if a != "--overwrite"]  # only the chief may start the search over
    time.sleep(1)  # the chief clears the folder (--overwrite) before workers write to it
    workers = [LocalTuner(worker_argv, f"tuner{k + 1}", port, share, out / "logs")
               for k, share in enumerate(core_shares(args.workers))]  # fmt: skip
    print(f"[tune] chief on 127.0.0.1:{port} (pid {chief.process.pid}); workers "
          f"{', '.join(f'{w.tuner_id} (pid {w.process.pid}, cores {w.cores})' for w in workers)}; "
          f"logs in {out / 'logs'}", flush=True)  # fmt: skip
    try:
        while chief.process.poll() is None:
            for worker in workers:
                restart_if_dead(worker)
            time.sleep(0.5)
        for worker in workers:
            worker.process.wait(timeout=120)
    finally:
        for tuner in (chief, *workers):
            if tuner.process.poll() is None:
                tuner.process.kill()
    return chief.process.returncode


def restart_if_dead(worker: LocalTuner, limit: int = 3) -> None:
    """A worker killed mid-trial is started again with its id, so the oracle hands it the same trial."""
    code = worker.process.poll()
    if code is None or code == 0 or worker.restarts >= limit:
        return
    worker.restarts += 1
    print(f"[tune] {worker.tuner_id} exited with {code}: starting it again ({worker.restarts}/{limit}); "
          "its trial runs again", flush=True)  # fmt: skip
    worker.process = worker.start()
    print(f"[tune] {worker.tuner_id} started again (pid {worker.process.pid})", flush=True)


def strip_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


# --- the command -----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuner", default="bayesian", choices=("hyperband", "bayesian", "random"))
    parser.add_argument("--preset", default="fast", help="tune for this preset's run (default fast)")
    parser.add_argument("--folds", type=int, default=1, metavar="N",
                        help="score trials on the first N of the preset's K folds (default 1; K: its CV)")  # fmt: skip
    parser.add_argument("--max-trials", type=int, default=20)
    parser.add_argument("--max-minutes", type=float, help="hand out no new trial after this long; keeps what it found")
    parser.add_argument("--epochs", type=int, help="epochs per trial instead of the preset's (quick checks)")
    parser.add_argument(
        "--max-rows", type=int, help="a stratified subsample instead of the preset's rows (quick checks)"
    )
    parser.add_argument("--workers", type=int, help="start a chief and N workers on this machine")
    parser.add_argument("--data-dir")
    parser.add_argument("--name", default="default", help="search name: output in runs/tuning/<name>/")
    parser.add_argument(
        "--out", help="output folder (default: runs/tuning/<name>/); shared by all machines if it can be"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-mmacs", type=float, default=45.0,
                        help="skip models above this many million MACs per image (default 45, 3x the default "
                             "model; 0: no limit)")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="start over instead of continuing")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace, folds: int) -> None:
    if not 1 <= args.folds <= folds:
        raise DigitsError(f"--folds {args.folds}: the preset {args.preset!r} has {folds} folds; use 1 to {folds}")
    if args.workers is not None and args.workers < 1:
        raise DigitsError(f"--workers {args.workers}: needs at least 1")


def load_rows(args: argparse.Namespace, preset) -> tuple[np.ndarray, np.ndarray]:
    """images uint8 [N, 28, 28], labels int [N]: the preset's rows (or --max-rows of them)."""
    folder, _ = data.find_or_demo(args.data_dir, Path("runs") / "demo-data")
    dataset = data.load(folder)
    rows = data.stratified_subsample(dataset.train_labels, args.max_rows or preset.train.max_rows or 10**9, 0)
    return dataset.train_images[rows], dataset.train_labels[rows]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    preset = get_preset(args.preset)
    check_args(args, preset.train.folds)
    out = Path(args.out) if args.out else Path("runs") / "tuning" / args.name
    if args.workers:
        return run_local(args, argv, out)
    here = role()
    budget = TimeBudget(args.max_minutes)
    epochs = args.epochs or preset.train.epochs
    base = model.validate_hparams(preset.hparams, f"preset {args.preset}")
    oracle = oracle_for(args.tuner, budget, args.max_trials, epochs, args.seed)
    tuner = make_tuner(oracle, base, out, args.overwrite and here != "worker", print)
    if here == "chief":
        print(f"[tune] chief: serving the oracle on {os.environ['KERASTUNER_ORACLE_IP']}:"
              f"{os.environ['KERASTUNER_ORACLE_PORT']} ({args.tuner}, {out})", flush=True)  # fmt: skip
        tuner.search()  # returns when the search is over and every worker has been told to stop
    else:
        search(tuner, args, preset, epochs, budget)
        if here == "worker":
            print(f"[tune] {tuner.tuner_id}: the chief has no more trials; done", flush=True)
            return 0
    return report(tuner.oracle, base, out, budget, args)


def search(tuner, args: argparse.Namespace, preset, epochs: int, budget: TimeBudget) -> None:
    images, labels = load_rows(args, preset)
    folds = preset_folds(labels, preset.train.folds, args.folds, args.seed)
    train.deterministic_on_cpu()
    job = {"epochs": epochs, "train": preset.train, "augment": preset.augment, "log": print,
           "max_mmacs": args.max_mmacs, "budget": budget}  # fmt: skip
    protocol = f"fold(s) 1-{args.folds} of its {preset.train.folds}, {epochs} epochs per trial"
    print(f"[tune] {tuner.tuner_id} ({args.tuner}) for preset {args.preset!r}: {len(labels)} rows, {protocol}, "
          f"in {tuner.project_dir}", flush=True)  # fmt: skip
    try:
        tuner.search(images, labels, folds, job)
    except RuntimeError as error:  # KerasTuner gives up after repeated failed trials; their errors are above
        raise DigitsError(f"the search stopped: {error}") from None


def report(oracle, base: dict[str, Any], out: Path, budget: TimeBudget, args: argparse.Namespace) -> int:
    table = trials_table(oracle, base)
    if budget.spent():
        print(f"--max-minutes {args.max_minutes} spent: no new trials; the trials so far are kept", flush=True)
    best = write_results(oracle, base, table, out)
    print(f"{len(table)} trials ({(table.epochs == 0).sum()} skipped over the compute budget); top 5:")
    print(table.drop(columns="finished_at").head(5).to_string(index=False))
    print(throughput(table))
    first = table.sort_values("trial").iloc[0]
    if args.tuner != "hyperband" and pd.notna(first.score):  # trial 0 is the preset's own model
        print(f"the preset's own model (trial {first.trial}) scored {first.score:.5f}; the best "
              f"{best['score'] - first.score:+.5f} over it")  # fmt: skip
    print(f"wrote {out / 'best_hparams.json'} (trial {best['trial']}, score {best['score']:.5f}) and "
          f"{out / 'trials.csv'}; use it: python -m src.submit --hparams {out / 'best_hparams.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
