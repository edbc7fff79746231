"""Run configuration: one frozen dataclass per concern, named presets, and CLI overrides.

Like nanoGPT's config: plain values, read once by the entry point and passed down explicitly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from src.errors import DigitsError


@dataclass(frozen=True)
class AugmentConfig:
    """Random affine + distortion applied to training images (never flips: a flipped 2 is not a 2)."""

    rotate_deg: float = 10.0
    scale: float = 0.10  # zoom drawn from [1 - scale, 1 + scale]
    shift: float = 0.10  # translation as a fraction of the 28-pixel side
    shear_deg: float = 0.0
    elastic_p: float = 0.0  # probability of an elastic distortion
    dropout_p: float = 0.0  # probability of coarse dropout (erase small patches)
    # How hard to augment is a tunable hyperparameter: model.DEFAULT_HPARAMS["aug_strength"].


@dataclass(frozen=True)
class TrainConfig:
    """K-fold x seeds training and inference."""

    folds: int = 5
    seeds: tuple[int, ...] = (0,)
    epochs: int = 30
    patience: int = 10  # early stopping on val accuracy; a fold keeps its last epoch's weights (src/train.py)
    # Rows of each fold's validation part scored after every epoch, a fixed stratified sample: enough for the
    # learning curve and early stopping, and all of them every epoch cost 4-8% of a run. The fold's model is
    # scored once on every row at the end (that is its CV). 0: every row, every epoch.
    epoch_val_rows: int = 2000
    tta: bool = False  # test-time augmentation at predict time
    tta_rounds: int = 4
    max_rows: int | None = None  # stratified subsample of train.csv (smoke runs, tests)
    workers: int = 1  # threads that augment batches while the model trains
    precision: str = "auto"  # what training and inference compute in: auto (src/precision.py picks per device), ...
    hparams: str | None = None  # path of a hyperparameter JSON; None: the preset's or the defaults
    # Paths of hyperparameter JSONs of further models, each trained on every fold of the final round and averaged
    # with the first (a second, different model per row); None: the preset's; (): none.
    extra_hparams: tuple[str, ...] | None = None
    # Semi-supervised second round: test images that round 1 predicts with at least this probability join
    # the training rows, labelled with that prediction; 0 trains one round. See train.pseudo_labels.
    pseudo: float = 0.0
    # With pseudo: round 2 also leaves out the training rows whose label round 1's out-of-fold probabilities
    # contradict (confident learning, the report's label_issues.csv). CV still counts every row.
    clean: bool = False
    # Epochs of round 2; None: `epochs`.
    pseudo_epochs: int | None = None
    # With pseudo: round 2 fine-tunes each fold's round-1 model (its first model; an extra model has no round-1
    # twin and starts fresh) instead of training a fresh one. Measured on fast: no gain (README), so off.
    warm: bool = False
    # With pseudo and extra models: the first model is not trained again in round 2; its round-1 fold models join
    # the final ensemble as they are, beside the extra models trained on train + pseudo-labels. Measured on full
    # (README): as good a CV as retraining it (9 rows better on one run), in about 40% less time.
    keep_round1: bool = False


@dataclass(frozen=True)
class ReaderConfig:
    """The OCR reader (src/reader.py): how it is trained from train.csv."""

    members: int = 2  # networks trained with seeds seed, seed + 1, ...; their probabilities are averaged
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 2e-3
    copies: int = 2  # pen-and-photo versions of each training digit per epoch (new ones every epoch)
    reject_fraction: float = 0.15  # share of "not a digit" marks in each epoch
    elastic_p: float = 0.0  # share of digits bent by a smooth elastic field (0.5 was tried: no better, see README)
    heldout: int = 4000  # train.csv rows the reader never sees; the OCR tests build pages from them
    max_rows: int | None = None  # train on a stratified subsample (quick checks)
    workers: int | None = None  # processes drawing training digits; None: all cores but one
    seed: int = 0


@dataclass(frozen=True)
class Preset:
    name: str
    train: TrainConfig
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    hparams: dict[str, Any] = field(default_factory=dict)  # overrides of model.DEFAULT_HPARAMS
    extra_hparams: tuple[dict[str, Any], ...] = ()  # further models of the final round (TrainConfig.extra_hparams)
    hparams_file: str | None = None  # a tuned JSON, relative to the repository; no preset has one yet


# A slimmer model (24-48 filters) trained harder (lr 2e-3, lighter dropout and augmentation): it converges in
# a few epochs, which is what a CPU budget needs: smoke's model and full's first.
SLIM: dict[str, Any] = {"filters": [24, 48], "dropout": 0.25, "learning_rate": 0.002, "batch_size": 128,
                        "aug_strength": 0.75}  # fmt: skip

# The winner of a search on fast's own protocol (README, Tuning): one conv per block, 16-64 filters, AdamW, cosine,
# strong augmentation. Alone about as good as SLIM, 1.3-2.2x cheaper (README); beside it, a model whose errors differ.
TUNED: dict[str, Any] = {"filters": [16, 64], "convs_per_block": 1, "dropout": 0.0, "optimizer": "adamw",
                         "learning_rate": 0.009945624052153063, "schedule": "cosine", "batch_size": 128,
                         "aug_strength": 1.5}  # fmt: skip

# TUNED's recipe on three narrower blocks (16-32-64 filters, 'same' padding, 3x3 stride-2 convs). Alone no better
# than TUNED; beside it, on the same folds, a second model whose errors differ: fast's second model until
# TUNED_DESKEW (README).
TUNED_3BLOCKS: dict[str, Any] = {**TUNED, "filters": [16, 32, 64], "padding": "same", "down_kernel_size": 3}

# TUNED on deskewed digits (model.deskew_layer). Alone as good as TUNED; beside a model on raw digits it errs
# elsewhere: the second model of fast (README, Deskewing).
TUNED_DESKEW: dict[str, Any] = {**TUNED, "deskew": True}

# TUNED_DESKEW trained on digits deskewed before the augmentation, whose shears and rotations then stay in its
# batches: the second model of full (README, Deskewing). It needs batches of its own, so it trains beside no model
# on raw digits; fast keeps TUNED_DESKEW, which trains jointly with TUNED.
TUNED_DESKEW_FIRST: dict[str, Any] = {**TUNED_DESKEW, "deskew_before_augment": True}

PRESETS: dict[str, Preset] = {
    # CI and quick checks: all of train.csv, 2 folds x 2 epochs, in about two and a half minutes on two cores
    # (CV 0.986; on 12,000 rows and the default model it was 0.948). Patience above the epochs: with --epochs 15
    # on a small slice, validation sits at chance while BatchNorm warms up, and early stopping must not end it there.
    "smoke": Preset("smoke", TrainConfig(folds=2, seeds=(0,), epochs=2, patience=10), AugmentConfig(), SLIM),
    # The default: a CPU-sized K-fold ensemble of two cheap models per fold, one on raw and one on deskewed digits
    # (TUNED, TUNED_DESKEW; one recipe, so each fold trains them together), averaged: CV 0.99524 (README).
    "fast": Preset(
        "fast",
        TrainConfig(folds=3, seeds=(0,), epochs=8, patience=8),
        AugmentConfig(),
        TUNED,
        extra_hparams=(TUNED_DESKEW,),
    ),
    # The leaderboard run, sized for two CPU cores and two hours: SLIM on raw digits, 5 folds x 10 epochs, then a
    # second round that trains TUNED_DESKEW_FIRST on train + the test images round 1 is sure of (pseudo-labels); each
    # fold's two models averaged. On a GPU the same command is minutes.
    "full": Preset(
        "full",
        TrainConfig(folds=5, seeds=(0,), epochs=10, patience=10, workers=2, pseudo=0.99, keep_round1=True),
        AugmentConfig(),
        SLIM,
        extra_hparams=(TUNED_DESKEW_FIRST,),
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise DigitsError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def with_overrides(config: Any, **overrides: Any) -> Any:
    """Return `config` with the fields that are given (not None) replaced: CLI flags win over presets."""
    given = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(given) - {f.name for f in dataclasses.fields(config)}
    if unknown:
        raise ValueError(f"{type(config).__name__} has no field(s) {sorted(unknown)}")
    return dataclasses.replace(config, **given)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
