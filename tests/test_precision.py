"""Training and inference precision per device: the choice, the flag, and that a lower precision predicts the same
digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src import data, ensemble, precision, submit
from src.errors import DigitsError


@pytest.mark.parametrize(
    ("gpu", "flags", "expected"),
    [
        ((9, 0), set(), "bfloat16"),  # H100
        ((8, 0), set(), "bfloat16"),  # A100
        ((7, 5), set(), "float16"),  # T4
        ((6, 0), {"amx_bf16"}, "float16"),  # P100: the GPU decides, not the host CPU
        ((5, 2), set(), "float32"),  # Maxwell: no fast half precision
        (None, {"avx512f", "amx_bf16", "amx_tile"}, "bfloat16"),  # Sapphire Rapids CPU
        (None, {"avx512f", "avx512_bf16"}, "bfloat16"),  # Cooper Lake CPU
        (None, {"avx2", "avx512f", "avx512_vnni"}, "float32"),  # bfloat16 would be emulated, slower
    ],
)
def test_auto_picks_the_fastest_precision_the_device_has(gpu, flags, expected):
    assert precision.choose(gpu, flags) == expected


def test_the_flag_overrides_and_a_bad_value_is_one_clear_error():
    assert precision.resolve("float16") == "float16"
    assert precision.resolve("auto") == precision.choose(None, precision.cpu_flags())  # this machine has no GPU
    with pytest.raises(DigitsError, match="--precision float64: choose one of auto, float32, bfloat16, float16"):
        precision.resolve("float64")


def test_bfloat16_inference_reads_the_same_digits(demo_run, demo_dir):
    """A run's fold model computing in bfloat16 gives the float32 answers (weights stay float32)."""
    fold_dir = ensemble.fold_dirs(demo_run)[0]
    images = data.load(demo_dir).test_images[:300]
    exact = ensemble.predict_probs(ensemble.load_model(fold_dir), images)
    low = ensemble.predict_probs(ensemble.load_model(fold_dir, "bfloat16"), images)
    assert low.dtype == np.float32 and np.allclose(low.sum(1), 1, atol=1e-3)
    assert np.mean(low.argmax(1) == exact.argmax(1)) >= 0.98
    assert np.abs(low - exact).max() < 0.1


def test_the_run_records_its_precision(demo_run):
    config = json.loads((demo_run / "config.json").read_text())
    cv = json.loads((demo_run / "cv.json").read_text())
    fold = json.loads((ensemble.fold_dirs(demo_run)[0] / "fold.json").read_text())
    assert config["train"]["precision"] == cv["precision"] == fold["precision"] == precision.resolve("auto")
    spec = submit.spec_from_args(submit.parse_args(["--precision", "bfloat16"]))
    assert spec.train.precision == "bfloat16"
