"""The CNN: conv blocks with BatchNorm and dropout, built from a plain hyperparameter dict.

The default follows the best public kernels (Chris Deotte's "25 million images"):
32-32-32(stride 2)-64-64-64(stride 2)-128, BatchNorm after every conv, dropout 0.4.
KerasTuner's search space (src/tune.py) produces the same dict, so tuned and untuned models come
from this one builder.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from src.data import SIDE
from src.errors import DigitsError

DEFAULT_HPARAMS: dict[str, Any] = {
    "filters": [32, 64],  # one conv block per entry
    "convs_per_block": 2,  # stride-1 convs before the stride-2 conv that ends each block
    "kernel_size": 3,
    "down_kernel_size": 5,
    "padding": "valid",  # of the stride-1 convs; 'valid' is cheaper, 'same' allows more blocks
    "dropout": 0.4,
    "dense": 128,
    "bn_momentum": 0.9,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "schedule": "onecycle",
    "batch_size": 64,
    "aug_strength": 1.0,
    # Momentum of an exponential moving average of the weights (Polyak averaging), 0 = off. With it on, each
    # epoch is validated and checkpointed with the averaged weights: a free ensemble member along the way.
    "ema": 0.0,
    # Share of each label's probability spread over the other classes (Szegedy et al. 2016), 0 = off.
    "label_smoothing": 0.0,
    # Straighten each digit's slant (moment-based shear, see deskew_layer) as the model's first layer, so training,
    # predicting, the kernel and the OCR all see the same deskewed digits. A model on deskewed digits errs
    # elsewhere than one on raw digits: a pair of one of each beat fast's old pair by 0.069 points (README).
    "deskew": False,
    # With deskew: training deskews each digit before augmenting it, and the layer passes training batches through
    # as they come (it deskews at validation and prediction). Deskewing after the augmentation straightens the
    # augmentation's shears and rotations back out; before it, they stay (README, Deskewing).
    "deskew_before_augment": False,
}

# How a model is trained, as opposed to its architecture: models that agree on all of these train as one
# joint_model, with one optimizer on one stream of batches (src/train.py).
RECIPE = (
    "optimizer",
    "learning_rate",
    "schedule",
    "batch_size",
    "aug_strength",
    "ema",
    "label_smoothing",
    "deskew_before_augment",  # its batches are deskewed ones
)

CHOICES = {
    "padding": ("valid", "same"),
    "optimizer": ("adam", "adamw", "sgd", "rmsprop"),
    "schedule": ("onecycle", "cosine", "exponential", "constant"),
}
RANGES = {  # key: (type, low, high)
    "convs_per_block": (int, 0, 4),
    "kernel_size": (int, 1, 7),
    "down_kernel_size": (int, 1, 7),
    "dropout": (float, 0.0, 0.9),
    "dense": (int, 0, 4096),
    "bn_momentum": (float, 0.0, 0.9999),
    "learning_rate": (float, 1e-6, 1.0),
    "batch_size": (int, 1, 4096),
    "aug_strength": (float, 0.0, 3.0),
    "ema": (float, 0.0, 0.9999),
    "label_smoothing": (float, 0.0, 0.5),
}


def validate_hparams(overrides: dict[str, Any], source: str = "hparams") -> dict[str, Any]:
    """DEFAULT_HPARAMS updated with `overrides`, each key checked; a bad one raises DigitsError naming it."""
    if not isinstance(overrides, dict):
        raise DigitsError(f"{source}: expected a JSON object of hyperparameters, got {type(overrides).__name__}")
    for key, value in overrides.items():
        if key not in DEFAULT_HPARAMS:
            raise DigitsError(f"{source}: unknown hyperparameter {key!r}; known: {', '.join(DEFAULT_HPARAMS)}")
        check_value(key, value, source)
    hparams = {**DEFAULT_HPARAMS, **overrides}
    check_spatial(hparams, source)
    if hparams["deskew_before_augment"] and not hparams["deskew"]:
        raise DigitsError(f"{source}: 'deskew_before_augment' needs 'deskew': true (the model deskews what it sees)")
    return hparams


def check_value(key: str, value: Any, source: str) -> None:
    bad = f"{source}: hyperparameter {key!r} = {value!r}"
    if key in ("deskew", "deskew_before_augment"):
        if not isinstance(value, bool):
            raise DigitsError(f"{bad}: expected true or false")
    elif key == "filters":
        if not (isinstance(value, list) and value and all(isinstance(f, int) and 1 <= f <= 1024 for f in value)):
            raise DigitsError(f"{bad}: expected a non-empty list of integers in 1-1024")
    elif key in CHOICES:
        if value not in CHOICES[key]:
            raise DigitsError(f"{bad}: expected one of {', '.join(CHOICES[key])}")
    else:
        kind, low, high = RANGES[key]
        ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind is int:
            ok_type = ok_type and float(value).is_integer()
        if not ok_type or not low <= value <= high:
            raise DigitsError(f"{bad}: expected {kind.__name__} in {low}-{high}")


def check_spatial(hparams: dict[str, Any], source: str) -> None:
    if feature_side(hparams) < 1:
        raise DigitsError(
            f"{source}: {len(hparams['filters'])} blocks with padding 'valid' shrink 28x28 to nothing; "
            "use padding 'same' or fewer filters entries"
        )


def feature_side(hparams: dict[str, Any]) -> int:
    """Side of the feature map after the conv blocks (28 for the input)."""
    side = 28
    for _ in hparams["filters"]:
        if hparams["padding"] == "valid":
            side -= hparams["convs_per_block"] * (hparams["kernel_size"] - 1)
        if side < 1:
            return 0
        side = math.ceil(side / 2)
    return side


def load_hparams(path: str | Path) -> dict[str, Any]:
    """Read a hyperparameter JSON (e.g. tune's best_hparams.json) and validate it."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise DigitsError(f"{path}: no such hyperparameter file") from None
    except json.JSONDecodeError as error:
        raise DigitsError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None
    return validate_hparams(values, str(path))


def build_model(hparams: dict[str, Any], precision: str = "float32", name: str = "digits_cnn"):
    """An uncompiled Keras CNN: uint8 [B, 28, 28, 1] -> class probabilities float32 [B, 10].

    `precision` (see src/precision.py) is what the layers compute in; weights and the softmax stay float32.
    """
    import keras
    from keras import layers

    dtype = compute_dtype(precision)

    def conv_bn_relu(x, filters: int, kernel: int, strides: int = 1, padding: str = "same"):
        x = layers.Conv2D(filters, kernel, strides=strides, padding=padding, use_bias=False, dtype=dtype)(x)
        x = layers.BatchNormalization(momentum=hparams["bn_momentum"], dtype=dtype)(x)
        return layers.ReLU(dtype=dtype)(x)

    inputs = keras.Input((28, 28, 1), dtype="uint8", name="image")
    x = inputs
    if hparams["deskew"]:
        deskew = deskew_layer()(in_training=not hparams["deskew_before_augment"], dtype=dtype, name="deskew")
        x = deskew(inputs)
    x = layers.Rescaling(1 / 255, dtype=dtype)(x)
    for filters in hparams["filters"]:
        for _ in range(hparams["convs_per_block"]):
            x = conv_bn_relu(x, filters, hparams["kernel_size"], padding=hparams["padding"])
        x = conv_bn_relu(x, filters, hparams["down_kernel_size"], strides=2)
        x = layers.Dropout(hparams["dropout"], dtype=dtype)(x)
    x = layers.Flatten(dtype=dtype)(x)
    if hparams["dense"]:
        x = layers.Dense(hparams["dense"], use_bias=False, dtype=dtype)(x)
        x = layers.BatchNormalization(momentum=hparams["bn_momentum"], dtype=dtype)(x)
        x = layers.ReLU(dtype=dtype)(x)
        x = layers.Dropout(hparams["dropout"], dtype=dtype)(x)
    outputs = layers.Dense(10, activation="softmax", dtype="float32", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def deskew_transforms(weight):
    """float32 [B, 8]: for each image float32 [B, 28, 28], the projective transform (keras.ops.image.affine_transform's
    form) that shears it upright about its centre of mass and moves that centre to the grid's centre.

    Upright: the shear along the rows by alpha = cov(row, col) / var(row) of the ink leaves no row-column covariance.
    A blank image gets the identity.
    """
    from keras import ops

    centre = (SIDE - 1) / 2
    grid = ops.arange(SIDE, dtype="float32")
    mass = ops.sum(weight, axis=(1, 2))
    some = mass > 0
    per_row, per_col = ops.sum(weight, axis=2), ops.sum(weight, axis=1)  # [B, 28] each
    row = ops.where(some, ops.sum(per_row * grid, axis=1) / ops.maximum(mass, 1e-6), centre)
    col = ops.where(some, ops.sum(per_col * grid, axis=1) / ops.maximum(mass, 1e-6), centre)
    d_row, d_col = grid[None] - row[:, None], grid[None] - col[:, None]  # [B, 28] each
    var_row = ops.sum(per_row * d_row**2, axis=1)
    cov = ops.sum(weight * d_row[:, :, None] * d_col[:, None, :], axis=(1, 2))
    alpha = ops.where(var_row > 1e-3, cov / ops.maximum(var_row, 1e-3), 0.0)
    # Output pixel (col x, row y) reads input (x + alpha (y - centre) + col - centre, y + row - centre).
    one, zero = ops.ones_like(alpha), ops.zeros_like(alpha)
    return ops.stack([one, alpha, col - centre - alpha * centre, zero, one, row - centre, zero, zero], axis=1)


@functools.cache
def deskew_layer():
    """The Keras layer class that deskews digits: uint8 [B, 28, 28, 1] -> float32 [B, 28, 28, 1] in 0-255
    (deskew_transforms, bilinear, zeros outside). The moments are taken in float32 whatever precision the model
    computes in. With in_training=False it passes training batches through, deskewed already (augment.Augmenter's
    deskew), and deskews only outside training. Made on first use, so that importing this module needs no
    TensorFlow; load a saved model through custom_objects().
    """
    import keras
    from keras import ops

    class Deskew(keras.layers.Layer):
        def __init__(self, in_training: bool = True, **kwargs):
            super().__init__(**kwargs)
            self.in_training = in_training

        def get_config(self):
            return {**super().get_config(), "in_training": self.in_training}

        def call(self, images, training=None):
            x = ops.cast(images, "float32")
            if training and not self.in_training:
                return x
            transforms = deskew_transforms(x[..., 0])
            return ops.image.affine_transform(x, transforms, interpolation="bilinear", fill_mode="constant")

        def compute_output_shape(self, input_shape):
            return input_shape

    return Deskew


def custom_objects() -> dict[str, Any]:
    """The kit's own layers, by name, for keras.models.load_model (a deskewing model has one)."""
    return {"Deskew": deskew_layer()}


def joint_model(nets: list):
    """One model whose outputs are `nets`' probabilities for the same images uint8 [B, 28, 28, 1].

    Compiled with one loss per output (compile_model's `outputs`), it trains every net at once on one stream of
    batches: the loss is their sum over disjoint weights, so each net gets exactly its own gradients. On two cores
    an epoch of two nets takes 18% less time than one net after the other: one augmentation pipeline,
    one step's overhead, fuller cores (README).
    The nets need distinct names (they name the outputs and their metrics: m0_accuracy, ...).
    """
    import keras

    inputs = keras.Input((28, 28, 1), dtype="uint8", name="image")
    return keras.Model(inputs, [net(inputs) for net in nets], name="joint")


def compute_dtype(precision: str) -> str:
    """The Keras dtype policy of the layers for `precision`: "mixed" keeps the weights float32."""
    return "float32" if precision == "float32" else f"mixed_{precision}"


def learning_rate(hparams: dict[str, Any], total_steps: int, steps_per_epoch: int):
    """The learning-rate schedule over the whole fold (`total_steps` optimizer steps)."""
    import keras

    peak = hparams["learning_rate"]
    total_steps = max(1, total_steps)
    if hparams["schedule"] == "constant":
        return peak
    if hparams["schedule"] == "exponential":  # Deotte's 0.95 per epoch
        return keras.optimizers.schedules.ExponentialDecay(peak, steps_per_epoch, 0.95)
    if hparams["schedule"] == "cosine":
        return keras.optimizers.schedules.CosineDecay(peak, total_steps, alpha=0.01)
    warmup = max(1, int(0.2 * total_steps))  # onecycle: linear warm-up, then cosine annealing
    return keras.optimizers.schedules.CosineDecay(
        peak / 10, max(1, total_steps - warmup), alpha=0.001, warmup_target=peak, warmup_steps=warmup
    )


def compile_model(
    model, hparams: dict[str, Any], total_steps: int, steps_per_epoch: int, precision: str = "float32", outputs: int = 1
):
    """`model` compiled with `hparams`' recipe; `outputs` > 1: a joint_model, each output with its own loss."""
    import keras

    lr = learning_rate(hparams, total_steps, steps_per_epoch)
    ema = {"use_ema": hparams["ema"] > 0, "ema_momentum": hparams["ema"] or 0.99}
    optimizer = {
        "adam": lambda: keras.optimizers.Adam(lr, **ema),
        "adamw": lambda: keras.optimizers.AdamW(lr, weight_decay=1e-4, **ema),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True, **ema),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr, **ema),
    }[hparams["optimizer"]]()
    if precision == "float16":  # float16 gradients underflow without a scaled loss (bfloat16 has float32's range)
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    each = loss(hparams["label_smoothing"])
    if outputs == 1:
        model.compile(optimizer=optimizer, loss=each, metrics=["accuracy"])
    else:
        model.compile(optimizer=optimizer, loss=[each] * outputs, metrics=[["accuracy"]] * outputs)
    # Built lazily, the optimizer makes its slots while fit traces the first step, which costs 2-3 s a model on
    # two cores (a tenth of a small fit; every fold and test pays it). The slots start at zero either way.
    optimizer.build(model.trainable_variables)
    return model


def loss(smoothing: float):
    """Cross-entropy on integer labels, smoothed by `smoothing` (Keras's sparse loss has no smoothing)."""
    import keras

    if smoothing == 0:
        return "sparse_categorical_crossentropy"
    smoothed = keras.losses.CategoricalCrossentropy(label_smoothing=smoothing)

    def smoothed_sparse(labels, probs):
        return smoothed(keras.ops.one_hot(keras.ops.reshape(keras.ops.cast(labels, "int32"), (-1,)), 10), probs)

    return smoothed_sparse
