"""Throughput benchmark (not a test): plain model.fit vs the kit's augmented pipeline, and what it means for a run.

    python -m src.bench [--data-dir D] [--images N] [--precision P] [--json]

Same model, same batch size, same optimizer; each fit runs two epochs over N images and the second
epoch is timed (the first pays for tracing). Also times augmentation alone (one thread) and, from
the measured rates of each preset's own models (those a fold trains together timed together), projects each
preset's wall time on this machine.
With --json the last line holds every figure: plain_fit_images_per_s, kit_train_images_per_s (each the best of
--repeats), kit_over_plain_per_round, predict_images_per_s, augment_images_per_s_per_thread, gpu_20k_cores,
projected_minutes, cpu, precision.
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

from src import augment, data, model, precision, train
from src.config import PRESETS, AugmentConfig, Preset
from src.errors import DigitsError, run_cli


def second_epoch_seconds(net, fit_args: dict) -> float:
    import keras

    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    net.fit(**fit_args, epochs=2, callbacks=[Timer()], verbose=0)
    return times[-1]


def cpu_model() -> str:
    """The CPU's model name: machines of one kind differ by up to 2x, so every figure carries it."""
    import platform

    return precision.cpuinfo("model name") or platform.processor() or "unknown"


def fresh_model(models: list[dict], steps: int, computes_in: str):
    """`models` (hyperparameters) compiled as src/train.py trains them: one model, or several together."""
    net, _ = train.fresh_net(models, computes_in, seed=0)
    return model.compile_model(net, models[0], 2 * steps, steps, computes_in, outputs=len(models))


def fit_seconds(
    images: np.ndarray, labels: np.ndarray, hparams: dict, repeats: int, workers: int, computes_in: str
) -> tuple[list[float], list[float]]:
    """(plain model.fit, kit pipeline) seconds for one epoch over images uint8 [N, 28, 28], one of each per repeat."""
    plain, kit = [], []
    for _ in range(repeats):  # alternate, so that neither side gains from running second
        plain.append(plain_seconds(images, labels, hparams, computes_in))
        kit.append(kit_seconds(images, labels, [hparams], workers, AugmentConfig(), computes_in))
    return plain, kit


def plain_seconds(images: np.ndarray, labels: np.ndarray, hparams: dict, computes_in: str) -> float:
    """Seconds of model.fit's second epoch on in-memory arrays."""
    batch = hparams["batch_size"]
    arrays = {"x": images[..., None], "y": labels, "batch_size": batch}
    steps = augment.steps_per_epoch(len(images), batch)
    return second_epoch_seconds(fresh_model([hparams], steps, computes_in), arrays)


def kit_seconds(
    images: np.ndarray, labels: np.ndarray, models: list[dict], workers: int, config: AugmentConfig, computes_in: str
) -> float:
    """Seconds of the second epoch through the kit's augmented tf.data pipeline, training `models` together."""
    recipe = models[0]
    batch = recipe["batch_size"]
    steps = augment.steps_per_epoch(len(images), batch)
    batches = augment.training_batches(images, labels, batch, 2, config, recipe["aug_strength"], 0, workers,
                                       outputs=len(models), deskew=recipe["deskew_before_augment"])  # fmt: skip
    return second_epoch_seconds(fresh_model(models, steps, computes_in), {"x": batches, "steps_per_epoch": steps})


def predict_seconds(hparams: dict, test: np.ndarray, computes_in: str) -> float:
    net = fresh_model([hparams], 1, computes_in)
    net.predict(test[:512, ..., None], batch_size=512, verbose=0)  # the first call pays for tracing
    start = time.perf_counter()
    net.predict(test[..., None], batch_size=512, verbose=0)
    return time.perf_counter() - start


def augment_images_per_s(images: np.ndarray, hparams: dict, config: AugmentConfig) -> float:
    """Images per second that one thread augments (batches of the model's size), best of two passes."""
    augmenter = augment.Augmenter(config, hparams["aug_strength"], hparams["deskew_before_augment"])
    batch = hparams["batch_size"]
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for step, first in enumerate(range(0, len(images), batch)):
            augmenter(images[first : first + batch], step)
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def preset_images(preset: Preset, n_train: int, n_test: int) -> list[tuple[list[dict[str, Any]], float, float]]:
    """(hyperparameters of models that train together, images each of them trains, images each predicts) over a
    whole run of `preset` that never stops early.

    A preset with pseudo-labels runs twice: round 1 trains the first model alone; round 2, the final round, trains
    each fold on its rows plus most test images. The final round trains the first model (unless it keeps round 1's,
    TrainConfig.keep_round1) and the extra ones, those of one recipe together (train.recipe_groups).
    """
    t = preset.train
    models = t.folds * len(t.seeds)
    val_rows = train.run_rows(t, n_train) / t.folds
    each_epoch = min(t.epoch_val_rows or val_rows, val_rows)  # the fold's sample (train.epoch_validation)
    tested = n_test * ((1 + t.tta_rounds) if t.tta else 1)  # the test set, once per model and round
    # per model and round: the sample after every epoch, then all its validation rows once, then the test set
    predicted = [models * (r.epochs * each_epoch + val_rows + tested) for r in train.each_round(t)]
    first = train.planned_images(dataclasses.replace(t, pseudo=0.0, keep_round1=False), n_train, n_test)  # round 1
    final = train.planned_images(t, n_train, n_test, final_models=2) - train.planned_images(t, n_train, n_test)
    hparams = [model.validate_hparams(h) for h in (preset.hparams, *preset.extra_hparams)]
    earlier = [([hparams[0]], first, sum(predicted[:-1]))] if train.rounds(t) > 1 else []
    trained = hparams[1:] if t.keep_round1 else hparams
    return earlier + [([trained[k] for k in group], final, predicted[-1]) for group in train.recipe_groups(trained)]


def projected_minutes(
    images: np.ndarray, labels: np.ndarray, test: np.ndarray, n_train: int, computes_in: str
) -> dict[str, float]:
    """Each preset's wall time on this machine, from the measured rates of the preset's own models, each group of
    models that trains together timed together."""
    minutes = {}
    for name, preset in PRESETS.items():
        seconds = 0.0
        for group, trained, predicted in preset_images(preset, n_train, len(test)):
            kit = kit_seconds(images, labels, group, preset.train.workers, preset.augment, computes_in)
            predict = sum(predict_seconds(hparams, test, computes_in) for hparams in group)
            seconds += trained * kit / len(images) + predicted * predict / len(test)
        minutes[name] = round(seconds / 60, 2)  # 2 places: on the small demo data smoke takes seconds
    return minutes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--images", type=int, default=8192, help="training images per timed epoch")
    parser.add_argument("--workers", type=int, default=1, help="augmentation threads of the kit's pipeline")
    parser.add_argument("--hparams", help="hyperparameter JSON of the model to time (default: the default model)")
    parser.add_argument("--repeats", type=int, default=3, help="alternate plain and kit this many times; best counts")
    parser.add_argument("--precision", choices=precision.CHOICES, default="auto",
                        help="float type both sides compute in, as in src.submit (default auto)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.images < 1:
        raise DigitsError(f"--repeats {args.repeats} --images {args.images}: each must be at least 1")

    folder = data.find_data_dir(args.data_dir) or data.write_demo(Path("runs/demo-data"))
    dataset = data.load(folder)
    n = min(args.images, len(dataset.train_images))
    images, labels = dataset.train_images[:n], dataset.train_labels[:n].astype(np.int32)
    hparams = model.load_hparams(args.hparams) if args.hparams else model.validate_hparams({})
    computes_in = precision.resolve(args.precision)
    print(f"benchmark on {folder}: {n} images/epoch, batch {hparams['batch_size']}, {args.hparams or 'default model'}, "
          f"computing in {computes_in}", flush=True)  # fmt: skip
    plain, kit = fit_seconds(images, labels, hparams, args.repeats, args.workers, computes_in)
    predict = predict_seconds(hparams, dataset.test_images, computes_in)
    per_thread = augment_images_per_s(images, hparams, AugmentConfig())
    projected = projected_minutes(images, labels, dataset.test_images, len(dataset.train_images), computes_in)
    result = {
        "plain_fit_images_per_s": round(n / min(plain), 1),
        "kit_train_images_per_s": round(n / min(kit), 1),
        # a shared VM swings 10-20% between calls: each round's pair shows how far the two sides' gap is noise
        "kit_over_plain_per_round": [round(p / k, 2) for p, k in zip(plain, kit)],
        "predict_images_per_s": round(len(dataset.test_images) / predict, 1),
        "augment_images_per_s_per_thread": round(per_thread, 1),
        "gpu_20k_cores": int(np.ceil(20_000 / per_thread)),
        "projected_minutes": projected,
        "cpu": cpu_model(),
        "precision": computes_in,
    }
    print_result(result, min(plain) / min(kit), args.repeats)
    if args.json:
        print(json.dumps(result))
    return 0


def print_result(result: dict, ratio: float, repeats: int) -> None:
    for label, key in (("plain model.fit (no augmentation)", "plain_fit_images_per_s"),
                       ("kit pipeline (augmented, tf.data)", "kit_train_images_per_s"),
                       ("predict", "predict_images_per_s"),
                       ("augmentation alone, per thread", "augment_images_per_s_per_thread")):  # fmt: skip
        print(f"{label:<40}{result[key]:>10.1f} images/s")
    rounds = ", ".join(f"{r:.2f}" for r in result["kit_over_plain_per_round"])
    print(f"kit / plain = {ratio:.2f} (best of {repeats} alternating runs each; each round: {rounds}) on "
          f"{result['cpu']}, computing in {result['precision']}")  # fmt: skip
    print(f"a GPU training 20,000 images/s needs {result['gpu_20k_cores']} augmentation threads (cores) to keep up")
    projected = ", ".join(f"{name} {minutes:.0f} min" for name, minutes in result["projected_minutes"].items())
    print(f"projected wall time on this machine (no early stopping): {projected}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
