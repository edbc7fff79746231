"""Random affine and distortion of training digits, fed to Keras by tf.data.

The affine, on in every preset, is drawn for a whole batch at once with numpy and applied by cv2.warpAffine,
drawn as albumentations' Affine draws it: albumentations called once per image spent about 0.25 ms on each
28x28 digit, and the kit trained 15% below plain model.fit on two cores (README, "Augmentation, batched").
The optional distortions (elastic, coarse dropout) are albumentations'.

Every batch is a pure function of (seed, global step): the same seed gives the same batches whatever
the number of worker threads, so a run is reproducible on CPU.
"""

from __future__ import annotations

import threading

import albumentations as A
import cv2
import numpy as np

from src.config import AugmentConfig
from src.data import SIDE

CENTER = SIDE / 2 - 0.5  # the pixel grid's centre, albumentations' rotation centre


def affine_matrices(
    rotate_deg: np.ndarray,
    scale: np.ndarray,
    shift_px: np.ndarray,
    shear_deg: np.ndarray,
) -> np.ndarray:
    """Forward maps float64 [N, 2, 3] (source pixel -> output pixel) about the image centre, composed as
    albumentations' Affine composes them: scale, then rotate, shear, translate.

    rotate_deg [N]; scale, shift_px and shear_deg [N, 2] (x, y).
    """
    theta = np.deg2rad(rotate_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    rotate_scale = np.empty((len(theta), 2, 2))
    rotate_scale[:, 0, 0], rotate_scale[:, 0, 1] = cos * scale[:, 0], sin * scale[:, 1]
    rotate_scale[:, 1, 0], rotate_scale[:, 1, 1] = -sin * scale[:, 0], cos * scale[:, 1]
    shear = np.ones((len(theta), 2, 2))
    shear[:, 0, 1], shear[:, 1, 0] = np.tan(np.deg2rad(shear_deg)).T
    linear = shear @ rotate_scale
    offset = shift_px + CENTER - linear @ np.full(2, CENTER)
    return np.concatenate([linear, offset[..., None]], axis=2)


def random_affines(n: int, config: AugmentConfig, strength: float, rng: np.random.Generator) -> np.ndarray:
    """float64 [n, 2, 3]: each parameter uniform in its range scaled by `strength`, x and y drawn apart;
    shifts in whole pixels, truncated toward zero, as albumentations draws them."""
    s = strength
    rotate = rng.uniform(-config.rotate_deg * s, config.rotate_deg * s, n)
    scale = rng.uniform(1 - config.scale * s, 1 + config.scale * s, (n, 2))
    shift = np.trunc(rng.uniform(-config.shift * s, config.shift * s, (n, 2)) * SIDE)
    shear = rng.uniform(-config.shear_deg * s, config.shear_deg * s, (n, 2))
    return affine_matrices(rotate, scale, shift, shear)


def deskew_matrices(images: np.ndarray) -> np.ndarray:
    """Forward maps float64 [N, 2, 3] that shear each digit uint8 [N, 28, 28] upright about its centre of mass and
    move that centre to the grid's centre: model.deskew_transforms' transform (which is its inverse, in Keras's
    form), in numpy, for the training batches of a model that deskews before augmenting. A blank image: identity.
    """
    weight = images.astype(np.float64)
    grid = np.arange(SIDE, dtype=np.float64)
    mass = weight.sum(axis=(1, 2))
    some = mass > 0
    per_row, per_col = weight.sum(axis=2), weight.sum(axis=1)  # [N, 28] each
    row = np.where(some, per_row @ grid / np.maximum(mass, 1e-6), CENTER)
    col = np.where(some, per_col @ grid / np.maximum(mass, 1e-6), CENTER)
    d_row, d_col = grid[None] - row[:, None], grid[None] - col[:, None]
    var_row = np.sum(per_row * d_row**2, axis=1)
    cov = np.einsum("nij,ni,nj->n", weight, d_row, d_col)
    alpha = np.where(var_row > 1e-3, cov / np.maximum(var_row, 1e-3), 0.0)
    # Input (x, y) goes to (x - alpha (y - row) - col + centre, y - row + centre): the inverse of the layer's map.
    matrices = np.zeros((len(images), 2, 3))
    matrices[:, 0, 0] = matrices[:, 1, 1] = 1
    matrices[:, 0, 1] = -alpha
    matrices[:, 0, 2] = alpha * row - col + CENTER
    matrices[:, 1, 2] = CENTER - row
    return matrices


def then(second: np.ndarray, first: np.ndarray) -> np.ndarray:
    """float64 [N, 2, 3]: the forward maps `first` [N, 2, 3] followed by `second` [N, 2, 3], as one."""
    linear = second[:, :, :2] @ first[:, :, :2]
    offset = second[:, :, :2] @ first[:, :, 2:] + second[:, :, 2:]
    return np.concatenate([linear, offset], axis=2)


def warp(images: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> uint8 [N, 28, 28]: each image moved by its matrix [N, 2, 3], bilinear, black outside."""
    out = np.empty_like(images)
    for i, (image, matrix) in enumerate(zip(images, matrices)):
        out[i] = cv2.warpAffine(image, matrix, (SIDE, SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return out


def build_distortions(config: AugmentConfig) -> A.Compose | None:
    """The albumentations pipeline of the optional distortions of one digit, None when both are off.
    No flips anywhere: a mirrored 2 is not a 2."""
    transforms = []
    if config.elastic_p > 0:
        # Simard et al.'s MNIST setting: sigma 4, alpha 34 on 28x28.
        transforms.append(A.ElasticTransform(alpha=34, sigma=4, border_mode=cv2.BORDER_CONSTANT, p=config.elastic_p))
    if config.dropout_p > 0:
        transforms.append(
            A.CoarseDropout(
                num_holes_range=(1, 3), hole_height_range=(3, 6), hole_width_range=(3, 6), p=config.dropout_p
            )
        )
    return A.Compose(transforms, strict=False) if transforms else None


class Augmenter:
    """Callable: (images uint8 [B, 28, 28], seed) -> augmented uint8 [B, 28, 28]. Thread-safe.

    `strength` scales the affine ranges (0 turns the affine off); it is the tunable `aug_strength` hyperparameter.
    `deskew` (the `deskew_before_augment` hyperparameter) stands each digit upright first, in the same warp.
    """

    def __init__(self, config: AugmentConfig, strength: float = 1.0, deskew: bool = False):
        self.config = config
        self.strength = strength
        self.deskew = deskew
        self.local = threading.local()  # albumentations pipelines keep RNG state: one per thread

    def distortions(self) -> A.Compose | None:
        if not hasattr(self.local, "distortions"):
            self.local.distortions = build_distortions(self.config)
        return self.local.distortions

    def __call__(self, images: np.ndarray, seed: int) -> np.ndarray:
        out, matrices = images, None
        if self.strength > 0:
            matrices = random_affines(len(images), self.config, self.strength, np.random.default_rng(seed))
        if self.deskew:
            upright = deskew_matrices(images)
            matrices = upright if matrices is None else then(matrices, upright)
        if matrices is not None:
            out = warp(images, matrices)
        distortions = self.distortions()
        if distortions is not None:
            distortions.set_random_seed(seed)
            out = np.stack([distortions(image=image)["image"] for image in out])
        return out


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
    outputs: int = 1,
    deskew: bool = False,
):
    """tf.data.Dataset of (uint8 [B, 28, 28, 1], int32 [B]) for `epochs` shuffled, augmented epochs; with
    `outputs` > 1 the labels come as a tuple of that many copies (one per output of a model.joint_model);
    with `deskew`, each digit stood upright before its augmentation (Augmenter).

    Augmentation runs in `workers` tf.data threads while the model trains on earlier batches
    (cv2 releases the GIL); batches come out in order, so results do not depend on `workers`.
    """
    import tensorflow as tf

    augment = Augmenter(config, strength, deskew)
    steps = steps_per_epoch(len(images), batch_size)

    def make_batch(step: np.int64) -> tuple[np.ndarray, np.ndarray]:
        epoch, index = divmod(int(step), steps)
        rows = epoch_order(len(images), seed, epoch)[index * batch_size : (index + 1) * batch_size]
        return augment(images[rows], batch_seed(seed, int(step)))[..., None], labels[rows].astype(np.int32)

    def tf_batch(step):
        x, y = tf.numpy_function(make_batch, [step], (tf.uint8, tf.int32), stateful=False)
        x.set_shape((None, 28, 28, 1))
        y.set_shape((None,))
        return x, targets(y, outputs)

    dataset = tf.data.Dataset.range(steps * epochs)
    dataset = dataset.map(tf_batch, num_parallel_calls=max(1, workers), deterministic=True)
    # The parallelism is fixed above, so tf.data's autotuner has nothing to tune; left on, its thread made each
    # fit end 7-50 s late (the iterator's deletion waits for the thread's next wake-up, and its period grows).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(max(2, workers)).with_options(options)


def targets(labels, outputs: int):
    """What fit takes as the labels int [B] (array or tensor) of a model with `outputs` outputs: one copy each."""
    return labels if outputs == 1 else (labels,) * outputs


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
