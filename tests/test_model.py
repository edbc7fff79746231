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


def slanted_stroke(slope: float) -> np.ndarray:
    """uint8 [28, 28]: a 3-pixel-wide bar from row 4 to row 23 whose column moves `slope` pixels a row, like a '/'."""
    image = np.zeros((28, 28), np.uint8)
    for row in range(4, 24):
        col = round(13.5 + slope * (row - 13.5))
        image[row, col - 1 : col + 2] = 255
    return image


def moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row and column of the centre of mass, slant cov(row, col) / var(row)), float64 [N] each."""
    weight = images.astype(np.float64)
    rows, cols = np.mgrid[:28, :28]
    mass = weight.sum((1, 2))
    row = (weight * rows).sum((1, 2)) / mass
    col = (weight * cols).sum((1, 2)) / mass
    d_row, d_col = rows - row[:, None, None], cols - col[:, None, None]
    return row, col, (weight * d_row * d_col).sum((1, 2)) / (weight * d_row**2).sum((1, 2))


def test_deskew_stands_a_slanted_stroke_upright_and_centres_it():
    strokes = np.stack([slanted_stroke(-0.4), np.roll(slanted_stroke(0.3), (2, -3), axis=(0, 1))])
    assert np.abs(moments(strokes)[2]).min() > 0.25  # both lean
    upright = np.asarray(model.deskew_layer()()(strokes[..., None]))[..., 0]
    row, col, slant = moments(upright)
    assert np.abs(slant).max() < 0.02
    np.testing.assert_allclose(row, 13.5, atol=0.1)
    np.testing.assert_allclose(col, 13.5, atol=0.1)
    assert upright.sum() == pytest.approx(strokes.sum(dtype=np.float64), rel=0.02)  # ink moved, not lost


def test_deskew_is_the_classic_moment_shear_on_real_digits(real_dir):
    """The textbook deskew, done by scipy, to float32 rounding. The images are framed in zeros for scipy, which
    does not blend the outside into samples just past the edge, as TensorFlow does."""
    from scipy import ndimage

    from src import data

    images = data.load_train(real_dir)[0][:200]
    row, col, slant = moments(images)
    framed = np.pad(images.astype(np.float64), ((0, 0), (2, 2), (2, 2)))
    want = np.stack([
        ndimage.affine_transform(image, [[1, 0], [a, 1]], offset=(r - 11.5, c - 11.5 - a * 13.5),
                                 output_shape=(28, 28), order=1)
        for image, r, c, a in zip(framed, row, col, slant)
    ])  # fmt: skip
    got = np.asarray(model.deskew_layer()()(images[..., None]))[..., 0]
    assert np.abs(got - want).max() < 0.01
    assert np.abs(moments(got)[2]).max() < 0.05 < np.abs(slant).mean()


def test_blank_images_pass_the_deskew_unchanged():
    blank = np.zeros((2, 28, 28, 1), np.uint8)
    assert np.asarray(model.deskew_layer()()(blank)).max() == 0


def test_a_deskewing_model_is_saved_loaded_and_predicts_in_any_precision(tmp_path):
    from src import ensemble

    hparams = model.validate_hparams({"filters": [8], "dense": 16, "deskew": True})
    net = model.build_model(hparams)
    assert [type(layer).__name__ for layer in net.layers][:3] == ["InputLayer", "Deskew", "Rescaling"]
    images = np.stack([slanted_stroke(s) for s in (-0.4, 0.0, 0.3, 0.5)])[..., None]
    net.save(tmp_path / "model.keras")
    loaded = ensemble.load_model(tmp_path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), net.predict(images, verbose=0), atol=1e-6)
    low = ensemble.load_model(tmp_path, "bfloat16")
    assert np.abs(low.predict(images, verbose=0) - net.predict(images, verbose=0)).max() < 0.05


def test_deskew_is_a_yes_or_no():
    assert model.validate_hparams({})["deskew"] is False
    with pytest.raises(DigitsError, match="'deskew' = 'yes': expected true or false"):
        model.validate_hparams({"deskew": "yes"})


def test_deskewing_before_the_augmentation_needs_a_deskewing_model():
    assert model.validate_hparams({})["deskew_before_augment"] is False
    with pytest.raises(DigitsError, match="'deskew_before_augment' needs 'deskew': true"):
        model.validate_hparams({"deskew_before_augment": True}, "hp.json")


def test_a_model_deskewed_before_augmenting_takes_its_training_batches_as_they_come(tmp_path):
    """Its batches were deskewed by augment.Augmenter; what it validates and predicts, it deskews itself, also
    after a save and load."""
    from src import ensemble

    hparams = model.validate_hparams({"filters": [8], "dense": 16, "deskew": True, "deskew_before_augment": True})
    net = model.build_model(hparams)
    net.save(tmp_path / "model.keras")
    layer = ensemble.load_model(tmp_path).get_layer("deskew")
    images = np.stack([slanted_stroke(-0.4), slanted_stroke(0.3)])[..., None]
    np.testing.assert_array_equal(np.asarray(layer(images, training=True)), images.astype(np.float32))
    upright = np.asarray(layer(images, training=False))[..., 0]
    assert np.abs(moments(upright)[2]).max() < 0.02
    always = model.build_model(model.validate_hparams({"filters": [8], "dense": 16, "deskew": True}))
    assert np.abs(moments(np.asarray(always.get_layer("deskew")(images, training=True))[..., 0])[2]).max() < 0.02
