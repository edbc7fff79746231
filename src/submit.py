"""The main job: Kaggle CSVs -> augmented K-fold CNN ensemble -> a validated submission.csv.

    python -m src.submit [--preset smoke|fast|full] [--data-dir D] [--out DIR] [--hparams FILE]
                         [--folds K] [--epochs E] [--seeds S ...] [--tta] [--resume RUN]

Writes <out>/<timestamp>_<preset>_cv<score>.csv with a metadata JSON beside it, and updates
<out>/submission.csv. Without competition data it runs on a demo dataset built from scikit-learn's digits.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src import data, model, registry
from src.config import AugmentConfig, TrainConfig, get_preset, to_dict, with_overrides
from src.errors import DigitsError, run_cli

RUNS_DIR = Path("runs")
REPO = Path(__file__).resolve().parent.parent


# --- the submission file -----------------------------------------------------------------------


def make_submission(labels: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"ImageId": np.arange(1, len(labels) + 1), "Label": labels.astype(int)})


def validate_submission(frame: pd.DataFrame, n_test: int, name: str = "submission") -> None:
    """Kaggle's rules: columns ImageId,Label; one row per test image; ImageId 1..N in order; Label 0-9."""
    if list(frame.columns) != ["ImageId", "Label"]:
        raise DigitsError(f"{name}: columns must be ImageId,Label, not {','.join(map(str, frame.columns))}")
    if len(frame) != n_test:
        raise DigitsError(f"{name}: {len(frame)} rows, but the test set has {n_test}")
    for column in frame.columns:
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise DigitsError(f"{name}: column {column} holds non-integers")
    wrong_id = np.flatnonzero(frame["ImageId"].to_numpy() != np.arange(1, n_test + 1))
    if len(wrong_id):
        raise DigitsError(f"{name}: line {wrong_id[0] + 2}: ImageId must be {wrong_id[0] + 1} (1..N in test.csv order)")
    bad_label = np.flatnonzero(~frame["Label"].between(0, 9).to_numpy())
    if len(bad_label):
        raise DigitsError(f"{name}: line {bad_label[0] + 2}: Label {frame['Label'].iloc[bad_label[0]]} is outside 0-9")


def read_submission(path: Path, n_test: int | None = None) -> pd.DataFrame:
    """Read and validate a submission CSV (n_test: expected rows; None: as many as it has)."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DigitsError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DigitsError(
            f"{path}: not a readable CSV ({str(error).splitlines()[0] if str(error) else 'empty'})"
        ) from None
    validate_submission(frame, len(frame) if n_test is None else n_test, str(path))
    return frame


def write_new(path: Path, text: str) -> None:
    """Write `path` atomically and only if it does not exist yet (never overwrite a submission)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, path)  # atomic, and fails if `path` exists
    except FileExistsError:
        raise DigitsError(f"{path}: already exists; refusing to overwrite it") from None
    finally:
        tmp.unlink()


def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def unique_stem(out_dir: Path, stem: str) -> str:
    """`stem`, or `stem`_2, _3, ... when a file of that name exists (two runs finishing in the same second)."""
    candidate, n = stem, 1
    while (out_dir / f"{candidate}.csv").exists() or (out_dir / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}_{n}"
    return candidate


def write_submission(frame: pd.DataFrame, n_test: int, out_dir: Path, stem: str, metadata: dict[str, Any]) -> Path:
    """Validate, then write <stem>.csv and <stem>.json (new files) and update submission.csv."""
    validate_submission(frame, n_test)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_text = frame.to_csv(index=False)
    path = out_dir / f"{stem}.csv"
    write_new(path, csv_text)
    write_new(out_dir / f"{stem}.json", json.dumps(metadata, indent=2, default=str) + "\n")
    replace_atomically(out_dir / "submission.csv", csv_text)
    return path


# --- the run -----------------------------------------------------------------------------------


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.submit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fast", help="smoke | fast | full (default: fast)")
    parser.add_argument("--data-dir", help="folder with train.csv(.gz)/test.csv(.gz) or digit-recognizer.zip")
    parser.add_argument("--out", default="submissions", help="where submissions go (default: submissions/)")
    parser.add_argument("--runs-dir", default=str(RUNS_DIR), help="where run artifacts go (default: runs/)")
    parser.add_argument("--hparams", help="hyperparameter JSON, e.g. from python -m src.tune")
    parser.add_argument("--folds", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seeds", type=int, nargs="+")
    parser.add_argument("--patience", type=int)
    parser.add_argument("--max-rows", type=int, help="train on a stratified subsample of this many rows")
    parser.add_argument("--workers", type=int, help="augmentation threads (default 1)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help="test-time augmentation")
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


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    preset = get_preset(args.preset)
    if args.folds is not None and args.folds < 2:
        raise DigitsError(f"--folds {args.folds}: K-fold needs at least 2 folds")
    if args.epochs is not None and args.epochs < 1:
        raise DigitsError(f"--epochs {args.epochs}: must be at least 1")
    train = with_overrides(
        preset.train,
        folds=args.folds,
        epochs=args.epochs,
        seeds=tuple(args.seeds) if args.seeds else None,
        patience=args.patience,
        tta=args.tta,
        max_rows=args.max_rows,
        workers=args.workers,
        hparams=args.hparams,
    )
    if train.hparams:
        hparams, source = model.load_hparams(train.hparams), str(train.hparams)
    elif preset.hparams_file:
        hparams, source = model.load_hparams(REPO / preset.hparams_file), preset.hparams_file
    else:
        hparams = model.validate_hparams(preset.hparams, f"preset {preset.name}")
        source = f"preset {preset.name}" if preset.hparams else "defaults"
    return RunSpec(preset.name, train, preset.augment, hparams, source)


def spec_from_run(run_dir: Path) -> RunSpec:
    path = run_dir / "config.json"
    if not path.is_file():
        raise DigitsError(f"--resume {run_dir}: no config.json there; is it a run folder under runs/?")
    saved = json.loads(path.read_text())
    train = TrainConfig(**{**saved["train"], "seeds": tuple(saved["train"]["seeds"])})
    return RunSpec(saved["preset"], train, AugmentConfig(**saved["augment"]), saved["hparams"], saved["hparams_source"])


def locate_data(data_dir: str | None, runs_dir: Path, log) -> tuple[Path, bool]:
    """The competition data folder, or a freshly written demo dataset (second value True)."""
    folder = data.find_data_dir(data_dir)
    if folder is not None:
        return folder, False
    demo = runs_dir / "demo-data"
    log(
        f"no competition data found (--data-dir, ${data.ENV_VAR}, {', '.join(data.SEARCH_PATHS)}): "
        f"running on the demo dataset (scikit-learn's 8x8 digits resized to 28x28) in {demo}"
    )
    return data.write_demo(demo), True


def new_run(runs_dir: Path, spec: RunSpec, stamp: str, source: dict[str, Any], rows: np.ndarray) -> Path:
    """Create runs/<stamp>_<preset>/ with the config and train rows that --resume and the reports read."""
    from src.train import write_json

    run_dir = runs_dir / f"{stamp}_{spec.preset}{'_demo' if source['demo'] else ''}"
    run_dir.mkdir(parents=True, exist_ok=False)
    config = {"preset": spec.preset, "train": to_dict(spec.train), "augment": to_dict(spec.augment),
              "hparams": spec.hparams, "hparams_source": spec.hparams_source, "data": source}  # fmt: skip
    write_json(run_dir / "config.json", config)
    np.save(run_dir / "train_rows.npy", rows)
    return run_dir


def resumed_data_dir(run_dir: Path, data_dir: str | None) -> str | None:
    """A resumed run trains on the data it started with, unless --data-dir says otherwise."""
    saved = json.loads((run_dir / "config.json").read_text())["data"]
    return data_dir or (saved["folder"] if Path(saved["folder"]).is_dir() else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs_dir = Path(args.runs_dir)
    log = lambda line: print(line, flush=True)  # noqa: E731
    run_dir = None
    if args.resume:
        run_dir = Path(args.resume) if Path(args.resume).is_dir() else runs_dir / args.resume
        spec = spec_from_run(run_dir)
        args.data_dir = resumed_data_dir(run_dir, args.data_dir)
    else:
        spec = spec_from_args(args)
    started = time.perf_counter()
    folder, demo = locate_data(args.data_dir, runs_dir, log)
    dataset = data.load(folder)
    source = {"folder": str(folder), "demo": demo, "hashes": dataset.hashes}
    log(f"data: {folder} ({len(dataset.train_images)} train, {len(dataset.test_images)} test images)")

    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()  # same seed and preset -> same submission on CPU
    from src import ensemble, train

    rows = data.stratified_subsample(dataset.train_labels, spec.train.max_rows or len(dataset.train_labels), 0)
    images, labels = dataset.train_images[rows], dataset.train_labels[rows]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = run_dir or new_run(runs_dir, spec, stamp, source, rows)
    log(
        f"run: {run_dir} | preset {spec.preset}: {spec.train.folds} folds x seeds {list(spec.train.seeds)}, "
        f"{spec.train.epochs} epochs, hparams from {spec.hparams_source}"
    )

    t0 = time.perf_counter()
    train.train_folds(images, labels, spec.hparams, spec.train, spec.augment, run_dir, log)
    train_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    tta_rounds = spec.train.tta_rounds if spec.train.tta else 0
    result = ensemble.ensemble_run(run_dir, labels, dataset.test_images, images, tta_rounds, spec.augment, log)
    predict_seconds = time.perf_counter() - t0
    cv = result["cv_accuracy"]
    log(f"CV accuracy {cv:.5f} over {result['oof_rows']} out-of-fold rows, {result['models']} models")

    metadata = {
        "run": str(run_dir), "preset": spec.preset, "message": args.message, "created": stamp,
        "cv_accuracy": cv, "test_rows": len(dataset.test_images),
        "cv_per_fold": [f["val_accuracy"] for f in result["folds"]],
        "seeds": list(spec.train.seeds), "folds": spec.train.folds, "tta_rounds": tta_rounds,
        "hparams": spec.hparams, "hparams_source": spec.hparams_source,
        "train": to_dict(spec.train), "augment": to_dict(spec.augment),
        "durations_s": {"train": round(train_seconds, 1), "predict": round(predict_seconds, 1),
                        "total": round(time.perf_counter() - started, 1)},
        "git_commit": git_commit(), "data": source,
    }  # fmt: skip
    out_dir = Path(args.out)
    stem = unique_stem(out_dir, f"{stamp}_{spec.preset}{'_demo' if demo else ''}_cv{cv:.5f}")
    path = write_submission(make_submission(result["test_probs"].argmax(1)), len(dataset.test_images), out_dir, stem,
                            metadata)  # fmt: skip
    (run_dir / "submission_path.txt").write_text(str(path) + "\n")
    registry.append(
        out_dir / registry.INDEX_NAME, event="written", file=path.name, preset=spec.preset, cv=f"{cv:.5f}",
        hparams_source=spec.hparams_source, git_commit=metadata["git_commit"], message=args.message,
    )  # fmt: skip
    log(f"wrote {path} (and {out_dir / 'submission.csv'}) in {train.format_seconds(time.perf_counter() - started)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
