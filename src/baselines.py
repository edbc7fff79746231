"""Baselines on the same stratified folds as the CNN: SVM, MLP and the seed notebooks' simple CNN.

    python -m src.baselines [--preset smoke|fast] [--data-dir D] [--out DIR] [--only NAME ...] [--submit]

Prints and saves (baselines.csv, baselines.md) a table of model, CV accuracy, train minutes and
predict images/s, next to the kit's ensemble from the latest run. --submit publishes each baseline's
own submission into submissions/ (and registers it in submissions/index.csv).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from src import data, ensemble, publish, train
from src.config import get_preset
from src.errors import DigitsError, run_cli


def svm():
    """RBF SVM on PCA-reduced, scaled pixels: the strongest classic baseline on MNIST."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from sklearn.svm import SVC

    scale = FunctionTransformer(lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0)
    return make_pipeline(scale, PCA(50, random_state=0), SVC(C=10, gamma="scale", probability=False))


class KerasBaseline:
    """A tiny estimator around a Keras model: fit(images, labels) / predict(images) like scikit-learn."""

    def __init__(self, build, epochs: int, seed: int = 0):
        self.build, self.epochs, self.seed = build, epochs, seed

    def fit(self, images: np.ndarray, labels: np.ndarray):
        import keras

        keras.utils.set_random_seed(self.seed)
        self.net = self.build()
        self.net.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        self.net.fit(images[..., None], labels, batch_size=128, epochs=self.epochs, verbose=0)
        return self

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.net.predict(images[..., None], batch_size=512, verbose=0).argmax(1)


def mlp_model():
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1), dtype="uint8"), layers.Rescaling(1 / 255), layers.Flatten(),
        layers.Dense(512, activation="relu"), layers.Dropout(0.3),
        layers.Dense(256, activation="relu"), layers.Dropout(0.3), layers.Dense(10, activation="softmax"),
    ])  # fmt: skip


def simple_cnn_model():
    """The seed notebooks' CNN: one conv layer, max-pool, dropout, dense 128."""
    import keras
    from keras import layers

    return keras.Sequential([
        keras.Input((28, 28, 1), dtype="uint8"), layers.Rescaling(1 / 255),
        layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(), layers.Dropout(0.25), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dropout(0.5), layers.Dense(10, activation="softmax"),
    ])  # fmt: skip


def baselines(epochs: int) -> dict:
    return {
        "svm": svm,
        "mlp": lambda: KerasBaseline(mlp_model, epochs),
        "simple_cnn": lambda: KerasBaseline(simple_cnn_model, epochs),
    }


def evaluate(make, images, labels, folds: list[train.Fold], test_images) -> dict:
    """CV accuracy over the folds, train minutes, predict images/s, and test labels from the last fold's model."""
    correct, train_s, predict_s, predicted = 0, 0.0, 0.0, 0
    for fold in folds:
        start = time.perf_counter()
        estimator = make().fit(images[fold.train_index], labels[fold.train_index])
        train_s += time.perf_counter() - start
        start = time.perf_counter()
        correct += (estimator.predict(images[fold.val_index]) == labels[fold.val_index]).sum()
        predict_s += time.perf_counter() - start
        predicted += len(fold.val_index)
    return {
        "cv_accuracy": round(correct / predicted, 5),
        "train_minutes": round(train_s / 60, 4),
        "predict_images_per_s": round(predicted / predict_s, 1),
        "test_labels": estimator.predict(test_images),
    }


def kit_row(runs_dir: Path) -> dict | None:
    """The latest kit run's ensemble, for comparison."""
    try:
        run = ensemble.latest_run(runs_dir)
    except DigitsError:
        return None
    cv = json.loads((run / "cv.json").read_text())
    minutes = sum(f["train_seconds"] for f in cv["folds"]) / 60
    return {"model": f"kit ensemble ({run.name})", "cv_accuracy": round(cv["cv_accuracy"], 5),
            "train_minutes": round(minutes, 2), "predict_images_per_s": None}  # fmt: skip


def markdown_table(frame: pd.DataFrame) -> str:
    cells = [[("" if pd.isna(v) else str(v)) for v in row] for row in frame.itertuples(index=False)]
    lines = [" | ".join(frame.columns), " | ".join("---" for _ in frame.columns), *(" | ".join(c) for c in cells)]
    return "\n".join(f"| {line} |" for line in lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fast", choices=("smoke", "fast", "full"))
    parser.add_argument("--data-dir")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", help="output folder (default: runs/baselines/<timestamp>)")
    parser.add_argument("--only", nargs="+", help="run only these: svm mlp simple_cnn")
    parser.add_argument("--epochs", type=int, help="epochs of the Keras baselines (default: the preset's)")
    parser.add_argument("--max-rows", type=int)
    parser.add_argument("--submit", action="store_true", help="publish each baseline's submission (and register it)")
    parser.add_argument("--submissions", default="submissions", help="where --submit writes (default: submissions/)")
    return parser.parse_args(argv)


def publish_baseline(name: str, result: dict, test_labels: np.ndarray, args: argparse.Namespace, stamp: str) -> Path:
    stem = f"{stamp}_baseline-{name}_cv{result['cv_accuracy']:.5f}"
    meta = {"baseline": name, "preset": args.preset, "test_rows": len(test_labels), **result}
    return publish.publish(test_labels, Path(args.submissions), stem, meta, preset=f"baseline-{name}",
                           cv=f"{result['cv_accuracy']:.5f}", message=f"baseline {name}")  # fmt: skip


def write_table(table: list[dict], out: Path) -> pd.DataFrame:
    frame = pd.DataFrame(table)
    out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out / "baselines.csv", index=False)
    (out / "baselines.md").write_text(markdown_table(frame))
    return frame


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = get_preset(args.preset)
    chosen = baselines(args.epochs or preset.train.epochs)
    unknown = set(args.only or []) - set(chosen)
    if unknown:
        raise DigitsError(f"--only: unknown baseline {sorted(unknown)[0]!r}; choose from {', '.join(chosen)}")
    runs_dir = Path(args.runs_dir)
    folder, _ = data.find_or_demo(args.data_dir, runs_dir / "demo-data")
    dataset = data.load(folder)
    rows = data.stratified_subsample(dataset.train_labels, args.max_rows or preset.train.max_rows or 10**9, 0)
    images, labels = dataset.train_images[rows], dataset.train_labels[rows]
    folds = train.make_folds(labels, preset.train.folds, preset.train.seeds[:1])
    stamp = publish.timestamp()
    table = []
    for name in args.only or chosen:
        print(f"[{name}] {len(folds)} folds on {len(labels)} rows ...", flush=True)
        result = evaluate(chosen[name], images, labels, folds, dataset.test_images)
        test_labels = result.pop("test_labels")
        table.append({"model": name, **result})
        print(f"[{name}] CV {result['cv_accuracy']:.5f} in {result['train_minutes']:.2f} min", flush=True)
        if args.submit:
            print(f"[{name}] wrote {publish_baseline(name, result, test_labels, args, stamp)}", flush=True)
    out = Path(args.out) if args.out else runs_dir / "baselines" / stamp
    frame = write_table(table + [row for row in [kit_row(runs_dir)] if row], out)
    print(frame.to_string(index=False))
    print(f"wrote {out / 'baselines.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
