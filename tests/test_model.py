"""The CNN builder: shapes, BatchNorm and dropout present, hyperparameters validated by name."""

from __future__ import annotations

import json

import numpy as np
import pytest

from src import model
from src.errors import DigitsError


def test_default_model_maps_uint8_digits_to_probabilities():
    net = model.build_model(model.validate_hparams({}))
    probs = net.predict(np.zeros((3, 28, 28, 1), np.uint8), verbose=0)
    assert probs.shape == (3, 10)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds.count("Conv2D") == 6 and kinds.count("BatchNormalization") == 7 and kinds.count("Dropout") == 3


def test_strides_follow_the_32_32_32s2_64_64_64s2_design():
    net = model.build_model(model.validate_hparams({}))
    convs = [layer for layer in net.layers if type(layer).__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [32, 32, 32, 64, 64, 64]
    assert [c.strides[0] for c in convs] == [1, 1, 2, 1, 1, 2]


def test_three_blocks_need_same_padding():
    with pytest.raises(DigitsError, match="shrink 28x28 to nothing"):
        model.validate_hparams({"filters": [32, 64, 128], "convs_per_block": 3, "kernel_size": 5})
    net = model.build_model(model.validate_hparams({"filters": [16, 32, 64], "padding": "same"}))
    assert net.output_shape == (None, 10)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"dropuot": 0.3}, "unknown hyperparameter 'dropuot'"),
        ({"dropout": 1.5}, "'dropout' = 1.5: expected float in 0.0-0.9"),
        ({"filters": []}, "'filters' = \\[\\]"),
        ({"optimizer": "adagrad"}, "'optimizer' = 'adagrad': expected one of adam"),
        ({"batch_size": 64.5}, "'batch_size' = 64.5"),
    ],
)
def test_bad_hyperparameters_are_named(bad, message):
    with pytest.raises(DigitsError, match=message):
        model.validate_hparams(bad)


def test_load_hparams_reads_json_and_reports_bad_files(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"dense": 64, "learning_rate": 0.002}))
    assert model.load_hparams(good)["dense"] == 64
    broken = tmp_path / "broken.json"
    broken.write_text("{'dense': 64")
    with pytest.raises(DigitsError, match="broken.json: not valid JSON"):
        model.load_hparams(broken)
    with pytest.raises(DigitsError, match="no such hyperparameter file"):
        model.load_hparams(tmp_path / "missing.json")


def test_label_smoothing_spreads_each_label_over_the_other_classes():
    labels = np.array([3, 7])
    probs = np.full((2, 10), 1e-4, np.float32)
    probs[[0, 1], labels] = 1 - 9e-4  # sure and right
    target = np.full((2, 10), 0.1 / 10, np.float32)
    target[[0, 1], labels] += 0.9
    want = float(np.mean(-(target * np.log(probs)).sum(axis=1)))
    assert float(model.loss(0.1)(labels, probs)) == pytest.approx(want, rel=1e-3)  # about 0.83
    assert model.loss(0.0) == "sparse_categorical_crossentropy"  # off: Keras's own loss, as before


def test_a_model_trained_with_label_smoothing_is_saved_and_loaded_for_predicting(tmp_path):
    from src import ensemble

    hparams = model.validate_hparams({"filters": [8], "dense": 16, "label_smoothing": 0.1})
    net = model.compile_model(model.build_model(hparams), hparams, total_steps=2, steps_per_epoch=1)
    images, labels = np.zeros((8, 28, 28, 1), np.uint8), np.arange(8) % 10
    net.fit(images, labels, epochs=1, verbose=0)
    net.save(tmp_path / "model.keras")
    loaded = ensemble.load_model(tmp_path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), net.predict(images, verbose=0), atol=1e-6)


def test_a_model_trained_in_bfloat16_keeps_float32_weights_and_predicts_in_any_precision(tmp_path):
    """bfloat16 training (the kit 1.5x as fast on a CPU with AVX512-BF16) must give a model any machine can use."""
    from src import ensemble

    hparams = model.validate_hparams({"filters": [8], "dense": 16})
    net = model.compile_model(model.build_model(hparams, "bfloat16"), hparams, 2, 1, "bfloat16")
    convs = [layer for layer in net.layers if type(layer).__name__ == "Conv2D"]
    assert {c.compute_dtype for c in convs} == {"bfloat16"} and {w.dtype for w in net.weights} == {"float32"}
    images, labels = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), np.uint8), np.arange(16) % 10
    net.fit(images, labels, epochs=1, verbose=0)
    net.save(tmp_path / "model.keras")
    exact = ensemble.load_model(tmp_path, "float32")
    assert {layer.compute_dtype for layer in exact.layers if layer.name != "image"} == {"float32"}
    probs = exact.predict(images, verbose=0)
    assert probs.dtype == np.float32 and np.abs(probs - net.predict(images, verbose=0)).max() < 0.05


def test_float16_training_scales_the_loss():
    """float16 gradients underflow without loss scaling (a T4 or P100 GPU trains in it)."""
    hparams = model.validate_hparams({"filters": [8], "dense": 16})
    net = model.compile_model(model.build_model(hparams, "float16"), hparams, 2, 1, "float16")
    assert type(net.optimizer).__name__ == "LossScaleOptimizer"
    assert type(model.compile_model(model.build_model(hparams), hparams, 2, 1).optimizer).__name__ == "Adam"
