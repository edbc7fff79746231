"""The main job: Kaggle CSVs -> augmented K-fold CNN ensemble -> a validated submission.csv.

    python -m src.submit [--preset smoke|fast|full] [--data-dir D] [--out DIR] [--hparams FILE]
                         [--extra-hparams FILE ...] [--folds K] [--epochs E] [--seeds S ...] [--tta]
                         [--precision P] [--pseudo P [--pseudo-epochs E] [--warm | --keep-round1] [--clean]]
                         [--epoch-val-rows N] [--resume RUN]

Writes <out>/<timestamp>_<preset>_cv<score>.csv with a metadata JSON beside it, and updates
<out>/submission.csv. Without competition data it runs on a demo dataset built from scikit-learn's digits.
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

from src import data, model, precision, publish
from src.config import AugmentConfig, Preset, TrainConfig, get_preset, to_dict, with_overrides
from src.errors import DigitsError, run_cli
from src.files import write_atomically

RUNS_DIR = Path("runs")
REPO = Path(__file__).resolve().parent.parent


# --- the run -------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fast", help="smoke | fast | full (default: fast)")
    parser.add_argument("--data-dir", help="folder with train.csv(.gz)/test.csv(.gz) or digit-recognizer.zip")
    parser.add_argument("--out", default="submissions", help="where submissions go (default: submissions/)")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR), help="where run artifacts go (default: runs/)")
    parser.add_argument("--hparams", help="hyperparameter JSON, e.g. from python -m src.tune")
    parser.add_argument("--extra-hparams", nargs="*", metavar="JSON",
                        help="hyperparameter JSONs of further models trained on every fold of the final round and "
                             "averaged with the first (default: the preset's; none given: none)")  # fmt: skip
    parser.add_argument("--folds", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--patience", type=int)
    parser.add_argument("--max-rows", type=int, help="train on a stratified subsample of this many rows")
    parser.add_argument("--epoch-val-rows", type=int, metavar="N",
                        help="validation rows of each fold scored after every epoch, a fixed stratified sample "
                             "(default 2000; 0: all); each fold's model is then scored on all")  # fmt: skip
    parser.add_argument("--workers", type=int, help="augmentation threads (default 1)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="test-time augmentation")
    parser.add_argument("--pseudo", type=float, metavar="P",
                        help="semi-supervised: a second round that also trains on the test images round 1 predicts "
                             "with probability >= P (e.g. 0.99); CV stays on train rows")  # fmt: skip
    parser.add_argument(
        "--pseudo-epochs", type=int, metavar="E", help="with --pseudo: round 2's epochs (default: --epochs)"
    )
    parser.add_argument("--warm", action=argparse.BooleanOptionalAction, default=None,
                        help="with --pseudo: round 2 fine-tunes each fold's round-1 model instead of training a "
                             "fresh one (measured on fast: no gain; see the README)")  # fmt: skip
    parser.add_argument("--keep-round1", action=argparse.BooleanOptionalAction, default=None,
                        help="with --pseudo and extra models: round 2 trains only the extra models; the first "
                             "model's round-1 fold models join the final ensemble as they are (full: on)")  # fmt: skip
    parser.add_argument("--clean", action=argparse.BooleanOptionalAction, default=None,
                        help="with --pseudo: round 2 leaves out the training rows whose label round 1's out-of-fold "
                             "probabilities contradict (confident learning); CV still counts them")  # fmt: skip
    parser.add_argument("--precision", choices=precision.CHOICES,
                        help="float type of training and inference, weights kept float32 (default auto: bfloat16 "
                             "where the CPU or GPU has it, float16 on P100/V100/T4, else float32)")  # fmt: skip
    parser.add_argument("--resume", metavar="RUN", help="finish an interrupted run (its folder under runs/)")
    parser.add_argument("--message", "-m", default="", help="note stored in the metadata")
    return parser.parse_args(argv)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    preset: str
    train: TrainConfig
    augment: AugmentConfig
    hparams: dict[str, Any]
    hparams_source: str
    extra_hparams: tuple[dict[str, Any], ...] = ()  # further models of the final round, each validated


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    preset = get_preset(args.preset)
    if args.folds is not None and args.folds < 2:
        raise DigitsError(f"--folds {args.folds}: K-fold needs at least 2 folds")
    if args.epochs is not None and args.epochs < 1:
        raise DigitsError(f"--epochs {args.epochs}: must be at least 1")
    if args.epoch_val_rows is not None and not (args.epoch_val_rows == 0 or args.epoch_val_rows >= 100):
        raise DigitsError(f"--epoch-val-rows {args.epoch_val_rows}: 0 (every row) or at least 100 (fewer make the "
                          "learning curve noise)")  # fmt: skip
    if args.pseudo is not None and not 0 <= args.pseudo <= 1:
        raise DigitsError(f"--pseudo {args.pseudo}: a probability in 0-1 (e.g. 0.99; 0 trains one round)")
    if args.pseudo_epochs is not None and args.pseudo_epochs < 1:
        raise DigitsError(f"--pseudo-epochs {args.pseudo_epochs}: must be at least 1")
    train = with_overrides(
        preset.train,
        folds=args.folds,
        epochs=args.epochs,
        seeds=tuple(args.seeds) if args.seeds else None,
        patience=args.patience,
        epoch_val_rows=args.epoch_val_rows,
        tta=args.tta,
        max_rows=args.max_rows,
        workers=args.workers,
        hparams=args.hparams,
        extra_hparams=None if args.extra_hparams is None else tuple(args.extra_hparams),
        pseudo=args.pseudo,
        clean=args.clean,
        pseudo_epochs=args.pseudo_epochs,
        warm=args.warm,
        keep_round1=args.keep_round1,
    )
    if train.clean and not train.pseudo:
        raise DigitsError("--clean needs --pseudo P: round 1's out-of-fold probabilities find the rows to leave out")
    if (train.warm or train.pseudo_epochs) and not train.pseudo:
        raise DigitsError("--warm and --pseudo-epochs need --pseudo P: they shape round 2, which --pseudo adds")
    if train.keep_round1 and train.warm:
        raise DigitsError("--keep-round1 keeps round 1's first model as it is, --warm fine-tunes it: choose one")
    train = with_overrides(train, precision=args.precision)
    if train.hparams:
        hparams, source = model.load_hparams(train.hparams), str(train.hparams)
    elif preset.hparams_file:
        hparams, source = model.load_hparams(REPO / preset.hparams_file), preset.hparams_file
    else:
        hparams = model.validate_hparams(preset.hparams, f"preset {preset.name}")
        source = f"preset {preset.name}" if preset.hparams else "defaults"
    extra = extra_models(train, preset)
    if train.keep_round1 and not (train.pseudo and extra):
        raise DigitsError("--keep-round1 needs --pseudo P and --extra-hparams FILE: round 2 then trains only the "
                          "extra models, beside round 1's first; use --no-keep-round1 otherwise")  # fmt: skip
    return RunSpec(preset.name, train, preset.augment, hparams, source, extra)


def validated(epoch_val_rows: int) -> str:
    """How a run validates its epochs, for its first line."""
    each = f"up to {epoch_val_rows:,} rows of its fold" if epoch_val_rows else "all rows of its fold"
    return f"each epoch validated on {each}, each fold's model on all"


def more_models_per_fold(extra: int) -> str:
    """The models a fold trains beside the first (extra_models), for the run's first line; "" when none."""
    return f" and {extra} more model{'s' if extra > 1 else ''} per fold" if extra else ""


def extra_models(train: TrainConfig, preset: Preset) -> tuple[dict[str, Any], ...]:
    """The final round's further models: from --extra-hparams files when given, else the preset's."""
    if train.extra_hparams is not None:
        return tuple(model.load_hparams(path) for path in train.extra_hparams)
    return tuple(model.validate_hparams(h, f"preset {preset.name}, extra model {k}")
                 for k, h in enumerate(preset.extra_hparams, 1))  # fmt: skip


def saved_config(run_dir: Path) -> dict[str, Any]:
    """A run's config.json, checked: a run folder written by another version or damaged is one clear line."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise DigitsError(f"--resume {run_dir}: no config.json there; is it a run folder under runs/?")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DigitsError(f"{path}: not valid JSON ({error}); the run cannot be resumed") from None
    keys = ("preset", "train", "augment", "hparams", "hparams_source", "data")
    missing = [key for key in keys if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise DigitsError(f"{path}: no {missing[0]!r}; written by another version? start a new run")
    known = {f.name for f in dataclasses.fields(TrainConfig)} | {f.name for f in dataclasses.fields(AugmentConfig)}
    unknown = sorted((set(saved["train"]) | set(saved["augment"])) - known)
    if unknown:
        raise DigitsError(f"{path}: unknown setting {unknown[0]!r}; written by another version? start a new run")
    return saved


def spec_from_run(run_dir: Path) -> RunSpec:
    saved = saved_config(run_dir)
    paths = saved["train"].get("extra_hparams")
    train = TrainConfig(**{**saved["train"], "seeds": tuple(saved["train"]["seeds"]),
                           "extra_hparams": None if paths is None else tuple(paths)})  # fmt: skip
    # validated again, so a run saved before a hyperparameter existed gets its default (e.g. "ema": 0, off)
    source = str(run_dir / "config.json")
    hparams = model.validate_hparams(saved["hparams"], source)
    extra = tuple(model.validate_hparams(h, source) for h in saved.get("extra_hparams", []))
    return RunSpec(saved["preset"], train, AugmentConfig(**saved["augment"]), hparams, saved["hparams_source"], extra)


def new_run(runs_dir: Path, spec: RunSpec, stamp: str, source: dict[str, Any], rows: np.ndarray) -> Path:
    """Create runs/<stamp>_<preset>/ with the config and train rows that --resume and the reports read."""
    from src.train import write_json

    run_dir = runs_dir / f"{stamp}_{spec.preset}{'_demo' if source['demo'] else ''}"
    run_dir.mkdir(parents=True, exist_ok=False)
    config = {"preset": spec.preset, "train": to_dict(spec.train), "augment": to_dict(spec.augment),
              "hparams": spec.hparams, "hparams_source": spec.hparams_source, "extra_hparams": spec.extra_hparams,
              "data": source}  # fmt: skip
    write_json(run_dir / "config.json", config)
    np.save(run_dir / "train_rows.npy", rows)
    return run_dir


def resumed_data_dir(run_dir: Path, data_dir: str | None) -> str | None:
    """A resumed run trains on the data it started with, unless --data-dir says otherwise."""
    saved = saved_config(run_dir)["data"]
    folder = saved.get("folder") if isinstance(saved, dict) else None
    return data_dir or (folder if folder and Path(folder).is_dir() else None)


def resolve_spec(args: argparse.Namespace, runs_dir: Path) -> tuple[RunSpec, Path | None]:
    """(what to run, the run folder when resuming): from the flags and preset, or from the resumed run."""
    if not args.resume:
        return spec_from_args(args), None
    run_dir = Path(args.resume) if Path(args.resume).is_dir() else runs_dir / args.resume
    spec = spec_from_run(run_dir)
    args.data_dir = resumed_data_dir(run_dir, args.data_dir)
    return spec, run_dir


def publish_run(args, spec: RunSpec, run_dir: Path, result: dict[str, Any], stamp: str, source: dict[str, Any],
                durations: dict[str, float], test_rows: int) -> Path:  # fmt: skip
    """The run's submission, with everything needed to tell later how it was made."""
    cv = result["cv_accuracy"]
    metadata = {
        "run": str(run_dir), "preset": spec.preset, "message": args.message, "created": stamp,
        "cv_accuracy": cv, "round1_cv_accuracy": result.get("round1_cv_accuracy"), "test_rows": test_rows,
        "cv_per_fold": [f["val_accuracy"] for f in result["folds"]],
        "seeds": list(spec.train.seeds), "folds": spec.train.folds, "tta_rounds": result["tta_rounds"],
        "hparams": spec.hparams, "hparams_source": spec.hparams_source, "extra_hparams": spec.extra_hparams,
        "train": to_dict(spec.train), "augment": to_dict(spec.augment),
        "durations_s": {k: round(v, 1) for k, v in durations.items()},
        "git_commit": publish.git_commit(), "data": source,
    }  # fmt: skip
    stem = f"{stamp}_{spec.preset}{'_demo' if source['demo'] else ''}_cv{cv:.5f}"
    path = publish.publish(result["test_probs"].argmax(1), Path(args.out), stem, metadata, preset=spec.preset,
                           cv=f"{cv:.5f}", hparams_source=spec.hparams_source, git_commit=metadata["git_commit"],
                           message=args.message)  # fmt: skip
    write_atomically(run_dir / "submission_path.txt", str(path) + "\n")
    return path


def train_and_predict(spec: RunSpec, images: np.ndarray, labels: np.ndarray, test_images: np.ndarray, run_dir: Path,
                      log) -> tuple[dict[str, Any], dict[str, float]]:  # fmt: skip
    """(the ensemble's result, seconds spent training and predicting): one round, or with --pseudo two.

    Round 1 of a pseudo-labelled run lives in <run>/round1/; round 2, whose models are the run's, in <run>/.
    The final round also trains the extra models, in <run>/m1_seed*_fold*/, ...: every fold gets each model.
    """
    from src import ensemble, train

    tta_rounds = spec.train.tta_rounds if spec.train.tta else 0
    durations = {"train": 0.0, "predict": 0.0}
    models = 1 + len(spec.extra_hparams)
    progress = train.Progress(train.planned_images(spec.train, len(labels), len(test_images), models), log)

    def one_round(folder: Path, pseudo: train.Pseudo | None = None, final: bool = True) -> dict[str, Any]:
        t0 = time.perf_counter()
        settings = train.round_two(spec.train) if pseudo else spec.train
        train.train_folds(images, labels, [spec.hparams, *spec.extra_hparams][: models if final else 1], settings,
                          spec.augment, folder, progress, log, pseudo)  # fmt: skip
        t1 = time.perf_counter()
        result = ensemble.ensemble_run(folder, labels, test_images, images, tta_rounds, spec.augment, log,
                                       spec.train.precision)  # fmt: skip
        durations["train"] += t1 - t0
        durations["predict"] += time.perf_counter() - t1
        return result

    if not spec.train.pseudo:
        return one_round(run_dir), durations
    log("round 1 of 2; the ETA covers both (round 2 trains on train + most test rows: about twice as long)")
    first = one_round(run_dir / "round1", final=False)
    log(f"round 1: CV {first['cv_accuracy']:.5f}; round 2 also trains on the test images round 1 is sure of")
    left_out = np.zeros(0, np.int64)
    if spec.train.clean:
        left_out = ensemble.label_issues(labels, first["oof_probs"])
        log(f"round 2 leaves out {len(left_out)} training rows whose label round 1 contradicts (CV still counts them)")
    pseudo = train.Pseudo(test_images, run_dir / "round1", spec.train.pseudo, left_out, spec.train.warm,
                          spec.train.keep_round1)  # fmt: skip
    result = one_round(run_dir, pseudo)
    return {**result, "round1_cv_accuracy": first["cv_accuracy"]}, durations


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs_dir = Path(args.runs_dir)
    log = lambda line: print(line, flush=True)  # noqa: E731
    spec, run_dir = resolve_spec(args, runs_dir)
    started = time.perf_counter()
    folder, demo = data.find_or_demo(args.data_dir, runs_dir / "demo-data", log)
    dataset = data.load(folder)
    source = {"folder": str(folder), "demo": demo, "hashes": dataset.hashes}
    log(f"data: {folder} ({len(dataset.train_images)} train, {len(dataset.test_images)} test images)")

    from src import train

    train.deterministic_on_cpu()
    # "auto" becomes what this machine computes fastest in, and the run records that (after the data checks:
    # asking the device loads TensorFlow)
    resolved = precision.resolve(spec.train.precision)
    spec = dataclasses.replace(spec, train=with_overrides(spec.train, precision=resolved))
    rows = data.stratified_subsample(dataset.train_labels, spec.train.max_rows or len(dataset.train_labels), 0)
    images, labels = dataset.train_images[rows], dataset.train_labels[rows]
    stamp = publish.timestamp()
    run_dir = run_dir or new_run(runs_dir, spec, stamp, source, rows)
    log(f"run: {run_dir} | preset {spec.preset}: {spec.train.folds} folds x seeds {list(spec.train.seeds)}, "
        f"{spec.train.epochs} epochs, hparams {spec.hparams_source}{more_models_per_fold(len(spec.extra_hparams))}; "
        f"computes in {spec.train.precision}; "
        f"{validated(spec.train.epoch_val_rows)}")  # fmt: skip

    result, durations = train_and_predict(spec, images, labels, dataset.test_images, run_dir, log)
    durations["total"] = time.perf_counter() - started
    log(
        f"CV accuracy {result['cv_accuracy']:.5f} over {result['oof_rows']} out-of-fold rows, {result['models']} models"
    )
    path = publish_run(args, spec, run_dir, result, stamp, source, durations, len(dataset.test_images))
    log(f"wrote {path} (and {Path(args.out) / 'submission.csv'}) in {train.format_seconds(durations['total'])}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
