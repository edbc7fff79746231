"""Random affine and distortion of training digits (albumentations), fed to Keras by tf.data.

Every batch is a pure function of (seed, global step): the same seed gives the same batches whatever
the number of worker threads, so a run is reproducible on CPU.
"""

from __future__ import annotations

import threading

import albumentations as A
import cv2
import numpy as np

from src.config import AugmentConfig


def build_pipeline(config: AugmentConfig, strength: float = 1.0) -> A.Compose:
    """The albumentations pipeline for one 28x28 uint8 digit. No flips: a mirrored 2 is not a 2.

    `strength` scales the affine ranges (0 turns them off); it is the tunable `aug_strength` hyperparameter.
    """
    s = strength
    transforms = [
        A.Affine(
            rotate=(-config.rotate_deg * s, config.rotate_deg * s),
            scale=(1 - config.scale * s, 1 + config.scale * s),
            translate_percent=(-config.shift * s, config.shift * s),
            shear=(-config.shear_deg * s, config.shear_deg * s),
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=1.0,
        )
    ]
    if config.elastic_p > 0:
        # Simard et al.'s MNIST setting: sigma 4, alpha 34 on 28x28.
        transforms.append(A.ElasticTransform(alpha=34, sigma=4, border_mode=cv2.BORDER_CONSTANT, p=config.elastic_p))
    if config.dropout_p > 0:
        transforms.append(
            A.CoarseDropout(
                num_holes_range=(1, 3), hole_height_range=(3, 6), hole_width_range=(3, 6), p=config.dropout_p
            )
        )
    return A.Compose(transforms, strict=False)


class Augmenter:
    """Callable: (images uint8 [B, 28, 28], seed) -> augmented uint8 [B, 28, 28]. Thread-safe."""

    def __init__(self, config: AugmentConfig, strength: float = 1.0):
        self.config = config
        self.strength = strength
        self.local = threading.local()  # albumentations pipelines keep RNG state: one per thread

    def pipeline(self) -> A.Compose:
        if not hasattr(self.local, "pipeline"):
            self.local.pipeline = build_pipeline(self.config, self.strength)
        return self.local.pipeline

    def __call__(self, images: np.ndarray, seed: int) -> np.ndarray:
        if self.strength == 0 and self.config.elastic_p == 0 and self.config.dropout_p == 0:
            return images
        pipeline = self.pipeline()
        pipeline.set_random_seed(seed)
        return np.stack([pipeline(image=image)["image"] for image in images])


def batch_seed(seed: int, step: int) -> int:
    """A distinct, reproducible 32-bit seed for each (run seed, global step)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7919]).permutation(n)


def training_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    epochs: int,
    config: AugmentConfig,
    strength: float,
    seed: int,
    workers: int = 1,
):
    """tf.data.Dataset of (uint8 [B, 28, 28, 1], int32 [B]) for `epochs` shuffled, augmented epochs.

    Augmentation runs in `workers` tf.data threads while the model trains on earlier batches
    (cv2 releases the GIL); batches come out in order, so results do not depend on `workers`.
    """
    import tensorflow as tf

    augment = Augmenter(config, strength)
    steps = steps_per_epoch(len(images), batch_size)

    def make_batch(step: np.int64) -> tuple[np.ndarray, np.ndarray]:
        epoch, index = divmod(int(step), steps)
        rows = epoch_order(len(images), seed, epoch)[index * batch_size : (index + 1) * batch_size]
        return augment(images[rows], batch_seed(seed, int(step)))[..., None], labels[rows].astype(np.int32)

    def tf_batch(step):
        x, y = tf.numpy_function(make_batch, [step], (tf.uint8, tf.int32), stateful=False)
        x.set_shape((None, 28, 28, 1))
        y.set_shape((None,))
        return x, y

    dataset = tf.data.Dataset.range(steps * epochs)
    dataset = dataset.map(tf_batch, num_parallel_calls=max(1, workers), deterministic=True)
    return dataset.prefetch(max(2, workers))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
