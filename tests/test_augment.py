"""Augmentation keeps shapes, dtype, range and labels; it is reproducible from the seed alone."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from src import augment, data
from src.config import AugmentConfig


def digits(demo_dir, n=64):
    dataset = data.load(demo_dir)
    return dataset.train_images[:n], dataset.train_labels[:n]


def test_augmented_images_keep_shape_dtype_and_range(demo_dir):
    images, _ = digits(demo_dir)
    out = augment.Augmenter(AugmentConfig(elastic_p=0.5, dropout_p=0.5))(images, seed=1)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert not np.array_equal(out, images)
    # Small affine moves keep most of the ink inside the frame.
    assert np.abs(out.astype(float).sum((1, 2)) / images.astype(float).sum((1, 2)) - 1).mean() < 0.25


def test_same_seed_same_images_other_seed_other_images(demo_dir):
    images, _ = digits(demo_dir)
    augmenter = augment.Augmenter(AugmentConfig())
    np.testing.assert_array_equal(augmenter(images, 7), augmenter(images, 7))
    assert not np.array_equal(augmenter(images, 7), augmenter(images, 8))


def test_strength_zero_is_the_identity(demo_dir):
    images, _ = digits(demo_dir)
    np.testing.assert_array_equal(augment.Augmenter(AugmentConfig(), strength=0)(images, 3), images)


def test_deskewing_before_augmenting_is_the_models_deskew_to_the_grey_level(real_dir):
    """augment's numpy deskew of the training batches (deskew_before_augment) and the model's layer, which deskews
    what the model validates and predicts, give the same digits, but for cv2's rounding to uint8."""
    from src import model

    images = data.load_train(real_dir)[0][:500]
    ours = augment.Augmenter(AugmentConfig(), strength=0, deskew=True)(images, 3)
    layer = np.asarray(model.deskew_layer()()(images[..., None]))[..., 0]
    assert np.abs(ours - layer).max() <= 0.51
    assert not np.array_equal(ours, images)


def test_deskewing_and_the_affine_are_one_warp_deskew_first(demo_dir):
    """One interpolation, not two: the same as deskewing, then augmenting the deskewed digits, to rounding."""
    images, _ = digits(demo_dir)
    both = augment.Augmenter(AugmentConfig(), strength=1.5, deskew=True)(images, 5)
    upright = augment.Augmenter(AugmentConfig(), strength=0, deskew=True)(images, 5)
    then_affine = augment.Augmenter(AugmentConfig(), strength=1.5)(upright, 5)
    assert np.abs(both.astype(int) - then_affine).mean() < 3  # grey levels of 255: two roundings against one
    assert np.abs(both.astype(int) - augment.Augmenter(AugmentConfig(), strength=1.5)(images, 5)).mean() > 5


def test_composed_maps_move_points_as_one_after_the_other():
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(2, 4, 2, 3))
    point = np.array([3.0, -2.0, 1.0])
    for a, b, ab in zip(first, second, augment.then(second, first)):
        np.testing.assert_allclose(ab @ point, b @ np.append(a @ point, 1.0))


def test_the_affine_is_albumentations_affine_drawn_for_the_whole_batch(demo_dir):
    images, _ = digits(demo_dir, 32)
    reference = A.Affine(
        rotate=(12, 12),
        scale={"x": (1.1, 1.1), "y": (0.92, 0.92)},
        translate_percent={"x": (0.1, 0.1), "y": (-0.05, -0.05)},  # 2.8 and -1.4 pixels: albumentations truncates
        shear={"x": (6, 6), "y": (-3, -3)},  # and negates the shear it draws
        border_mode=cv2.BORDER_CONSTANT,
        fill=0,
        p=1,
    )
    n = len(images)
    matrices = augment.affine_matrices(
        np.full(n, 12.0), np.tile([1.1, 0.92], (n, 1)), np.tile([2.0, -1.0], (n, 1)), np.tile([-6.0, 3.0], (n, 1))
    )
    expected = np.stack([reference(image=image)["image"] for image in images])
    np.testing.assert_array_equal(augment.warp(images, matrices), expected)


def test_random_affines_stay_in_their_ranges():
    config = AugmentConfig(rotate_deg=10, scale=0.1, shift=0.1, shear_deg=0)
    matrices = augment.random_affines(2000, config, 0.5, np.random.default_rng(0))
    linear, offset = matrices[:, :, :2], matrices[:, :, 2]
    # Pure scale and rotation: the columns' lengths are the scales, within 1 -+ 0.05.
    scales = np.linalg.norm(linear, axis=1)
    assert 0.95 <= scales.min() and scales.max() <= 1.05 and scales.std() > 0.02
    angles = np.degrees(np.arctan2(linear[:, 0, 1], linear[:, 1, 1]))
    assert np.abs(angles).max() <= 5 and np.abs(angles).max() > 4.5
    # The shift, what moves the centre, is whole pixels: 0.05 of 28 is 1.4, truncated to -1, 0 or 1.
    shift = offset + linear @ np.full(2, augment.CENTER) - augment.CENTER
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-9)
    assert set(np.round(shift).ravel()) == {-1.0, 0.0, 1.0}


def test_distortions_are_optional_and_never_flip():
    assert augment.build_distortions(AugmentConfig()) is None
    pipeline = augment.build_distortions(AugmentConfig(elastic_p=1, dropout_p=1))
    names = [type(t).__name__ for t in pipeline.transforms]
    assert names == ["ElasticTransform", "CoarseDropout"]  # no Flip, no Transpose: a mirrored 2 is not a 2


def test_training_batches_cover_each_epoch_once_with_labels_kept(demo_dir):
    images, labels = digits(demo_dir, 100)
    # Tag each image by its row so the labels can be checked after shuffling.
    batches = list(augment.training_batches(images, labels, 32, 2, AugmentConfig(), 0.0, seed=0, workers=2))
    assert len(batches) == 2 * augment.steps_per_epoch(100, 32)
    x, y = batches[0]
    assert x.shape == (32, 28, 28, 1) and x.dtype.name == "uint8" and y.dtype.name == "int32"
    first_epoch = np.concatenate([b[1].numpy() for b in batches[:4]])
    assert sorted(first_epoch) == sorted(labels)
    lookup = {img.tobytes(): lab for img, lab in zip(images, labels)}
    for bx, by in batches:  # strength 0: images pass unchanged, so each label must match its image
        assert all(lookup[img[..., 0].tobytes()] == lab for img, lab in zip(bx.numpy(), by.numpy()))
    second_epoch = np.concatenate([b[1].numpy() for b in batches[4:]])
    assert not np.array_equal(first_epoch, second_epoch)  # reshuffled


def test_batches_do_not_depend_on_worker_count(demo_dir):
    images, labels = digits(demo_dir, 96)
    one = [b[0].numpy() for b in augment.training_batches(images, labels, 32, 1, AugmentConfig(), 1.0, 5, 1)]
    two = [b[0].numpy() for b in augment.training_batches(images, labels, 32, 1, AugmentConfig(), 1.0, 5, 2)]
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_batches_leave_tf_data_autotune_off(demo_dir):
    """The pipeline's parallelism is fixed; tf.data's autotuner left on made many fits end 7-50 s late
    (deleting the iterator waits for the tuner thread's next wake-up), so it is off."""
    images, labels = digits(demo_dir, 64)
    batches = augment.training_batches(images, labels, 32, 1, AugmentConfig(), 1.0, seed=0, workers=2)
    assert batches.options().autotune.enabled is False
