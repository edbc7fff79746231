"""Throughput benchmark (not a test): plain model.fit on in-memory arrays vs the kit's augmented pipeline.

    python -m src.bench [--data-dir D] [--images N] [--json]

Same model, same batch size, same optimizer; each fit runs two epochs over N images and the second
epoch is timed (the first pays for tracing). With --json the last line is
{"plain_fit_images_per_s": ..., "kit_train_images_per_s": ..., "predict_images_per_s": ..., "cpu": ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from src import augment, data, model
from src.config import AugmentConfig
from src.errors import run_cli


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
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def fresh_model(hparams: dict, steps: int):
    import keras

    keras.utils.set_random_seed(0)
    return model.compile_model(model.build_model(hparams), hparams, 2 * steps, steps)


def fit_seconds(
    images: np.ndarray, labels: np.ndarray, hparams: dict, repeats: int, workers: int
) -> tuple[float, float]:
    """(plain model.fit, kit pipeline) seconds for one epoch over images uint8 [N, 28, 28], best of `repeats`."""
    batch = hparams["batch_size"]
    steps = augment.steps_per_epoch(len(images), batch)
    plain, kit = float("inf"), float("inf")
    for _ in range(repeats):  # alternate, so that neither side gains from running second
        arrays = {"x": images[..., None], "y": labels, "batch_size": batch}
        plain = min(plain, second_epoch_seconds(fresh_model(hparams, steps), arrays))
        batches = augment.training_batches(images, labels, batch, 2, AugmentConfig(), hparams["aug_strength"], 0,
                                           workers)  # fmt: skip
        kit = min(kit, second_epoch_seconds(fresh_model(hparams, steps), {"x": batches, "steps_per_epoch": steps}))
    return plain, kit


def predict_seconds(hparams: dict, test: np.ndarray) -> float:
    net = fresh_model(hparams, 1)
    net.predict(test[:512, ..., None], batch_size=512, verbose=0)  # the first call pays for tracing
    start = time.perf_counter()
    net.predict(test[..., None], batch_size=512, verbose=0)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--images", type=int, default=8192, help="training images per timed epoch")
    parser.add_argument("--workers", type=int, default=1, help="augmentation threads of the kit's pipeline")
    parser.add_argument("--hparams", help="hyperparameter JSON of the model to time (default: the default model)")
    parser.add_argument("--repeats", type=int, default=2, help="alternate plain and kit this many times; best counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    folder = data.find_data_dir(args.data_dir) or data.write_demo(Path("runs/demo-data"))
    dataset = data.load(folder)
    n = min(args.images, len(dataset.train_images))
    images, labels = dataset.train_images[:n], dataset.train_labels[:n].astype(np.int32)
    hparams = model.load_hparams(args.hparams) if args.hparams else model.validate_hparams({})
    print(f"benchmark on {folder}: {n} images/epoch, batch {hparams['batch_size']}, {args.hparams or 'default model'}",
          flush=True)  # fmt: skip
    plain, kit = fit_seconds(images, labels, hparams, args.repeats, args.workers)
    predict = predict_seconds(hparams, dataset.test_images)
    result = {
        "plain_fit_images_per_s": round(n / plain, 1),
        "kit_train_images_per_s": round(n / kit, 1),
        "predict_images_per_s": round(len(dataset.test_images) / predict, 1),
        "cpu": cpu_model(),
    }
    print(f"{'plain model.fit (no augmentation)':<40}{result['plain_fit_images_per_s']:>10.1f} images/s")
    print(f"{'kit pipeline (augmented, tf.data)':<40}{result['kit_train_images_per_s']:>10.1f} images/s")
    print(f"{'predict':<40}{result['predict_images_per_s']:>10.1f} images/s")
    print(f"kit / plain = {plain / kit:.2f} (best of {args.repeats} alternating runs each) on {result['cpu']}")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
