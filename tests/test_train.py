"""K-fold splitting: stratified, disjoint, covering every row once per seed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from src import config, data, precision, train
from src.config import PRESETS


def test_folds_are_stratified_disjoint_and_cover_every_row(demo_dir):
    labels = data.load(demo_dir).train_labels
    folds = train.make_folds(labels, 5, (0, 1))
    assert len(folds) == 10 and [f.name for f in folds[:2]] == ["seed0_fold0", "seed0_fold1"]
    for seed in (0, 1):
        vals = np.concatenate([f.val_index for f in folds if f.seed == seed])
        assert sorted(vals) == list(range(len(labels)))
    share = np.bincount(labels, minlength=10) / len(labels)
    for fold in folds:
        assert not set(fold.train_index) & set(fold.val_index)
        fold_share = np.bincount(labels[fold.val_index], minlength=10) / len(fold.val_index)
        assert np.abs(fold_share - share).max() < 0.02
    assert not np.array_equal(folds[0].val_index, folds[5].val_index)  # another seed, another split


def test_progress_estimates_time_left():
    lines = []
    progress = train.Progress(images_total=4000, log=lines.append)
    progress.epoch("[m]", 1, 2, {"loss": 1.0, "accuracy": 0.5, "val_accuracy": 0.6}, 30.0, images=1000)
    assert lines[-1].endswith("30s/epoch, ETA 1m30s")
    progress.skip(2000)
    progress.epoch("[m]", 2, 2, {}, 10.0, images=1000)
    assert lines[-1].endswith("ETA 0s")


def test_the_eta_of_a_pseudo_label_run_covers_both_rounds_and_their_longer_epochs():
    """fast + pseudo: 3 folds x 8 epochs of 28,000 rows, then of 28,000 + 95% of 28,000 test rows."""
    fast = PRESETS["fast"].train
    once = train.planned_images(fast, 42_000, 28_000)
    twice = train.planned_images(dataclasses.replace(fast, pseudo=0.99), 42_000, 28_000)
    assert once == 3 * 8 * 28_000 and twice == once + 3 * 8 * (28_000 + 0.95 * 28_000)
    lines = []
    progress = train.Progress(twice, log=lines.append)
    progress.epoch("[m]", 1, 8, {}, 30.0, images=28_000)  # 30 s per 28,000 images: the rest takes 2,094 s
    assert lines[-1].endswith("ETA 34m54s")


@pytest.mark.slow
def test_bench_reports_throughput_as_json(demo_dir, capsys):
    import json

    from src import bench

    assert bench.main(["--data-dir", str(demo_dir), "--images", "256", "--repeats", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rates = {"plain_fit_images_per_s", "kit_train_images_per_s", "predict_images_per_s",
             "augment_images_per_s_per_thread"}  # fmt: skip
    assert set(result) == rates | {"kit_over_plain_per_round", "gpu_20k_cores", "projected_minutes", "cpu", "precision"}
    # one ratio per alternating round, the best rates among them: the spread shows what of the gap is noise
    assert len(result["kit_over_plain_per_round"]) == 2 and all(r > 0 for r in result["kit_over_plain_per_round"])
    assert result["precision"] == precision.resolve("auto")
    assert all(result[k] > 0 for k in rates) and result["cpu"] and result["gpu_20k_cores"] >= 1
    # The projection follows the presets' sizes: full trains 5 folds x 10 epochs twice (the second round on
    # train + pseudo-labelled test rows), fast 3 folds x 8 epochs once, smoke 2 x 2: at least 2.6x apart in images
    # trained and predicted, so timing noise cannot reorder them.
    projected = result["projected_minutes"]
    assert set(projected) == set(PRESETS) and projected["full"] > projected["fast"] > projected["smoke"] > 0


def test_bench_refuses_zero_repeats_in_one_line(demo_dir, capsys):
    from src import bench
    from src.errors import run_cli

    assert run_cli(bench.main, ["--data-dir", str(demo_dir), "--repeats", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --repeats 0 --images 8192: each must be at least 1"


def test_preset_images_counts_every_fold_seed_and_epoch():
    from src import bench

    # fast: two different models per fold with one recipe, so they train together and are timed together
    [(group, trained, predicted)] = bench.preset_images(PRESETS["fast"], 42_000, 28_000)
    assert [h["deskew"] for h in group] == [False, True] and group[0]["filters"] == group[1]["filters"]
    assert trained == 3 * 8 * 28_000  # each of them: 3 folds, 8 epochs, two thirds of the rows each
    # each of them: 2,000 of its 14,000 validation rows every epoch, all of them once, then the test set
    assert predicted == 3 * (8 * 2_000 + 14_000 + 28_000)
    every_row = dataclasses.replace(PRESETS["fast"], train=dataclasses.replace(PRESETS["fast"].train, epoch_val_rows=0))
    assert bench.preset_images(every_row, 42_000, 28_000)[0][2] == 3 * (8 * 14_000 + 14_000 + 28_000)


def test_preset_images_count_the_pseudo_label_round_and_the_extra_model():
    from src import bench

    full = PRESETS["full"]
    once = dataclasses.replace(full, train=dataclasses.replace(full.train, pseudo=0.0, keep_round1=False),
                               extra_hparams=())  # fmt: skip
    [([slim], trained_once, predicted_once)] = bench.preset_images(once, 42_000, 28_000)
    round_two = 5 * 10 * (33_600 + train.PSEUDO_SHARE * 28_000)
    # full keeps round 1's slim model: round 2 trains only the extra model, on train + pseudo-labels
    round_one, (extra, trained_extra, predicted_extra) = bench.preset_images(full, 42_000, 28_000)
    assert round_one == ([slim], trained_once, predicted_once) and trained_once == 5 * 10 * 33_600
    assert len(extra) == 1 and extra[0]["deskew"] and not slim["deskew"]
    assert extra[0]["filters"] == config.TUNED["filters"] != slim["filters"]
    assert trained_extra == pytest.approx(round_two) and predicted_extra == predicted_once
    every_model = train.planned_images(full.train, 42_000, 28_000, final_models=2)
    assert every_model == pytest.approx(trained_once + trained_extra)
    # without keep_round1, round 2 trains the slim model again, then the extra one (another recipe: not together)
    retrain = dataclasses.replace(full, train=dataclasses.replace(full.train, keep_round1=False))
    round_one, (first, trained, _), (again, _, _) = bench.preset_images(retrain, 42_000, 28_000)
    assert round_one[0] == first == [slim] and again == extra and trained == pytest.approx(round_two)
    every_model = train.planned_images(retrain.train, 42_000, 28_000, final_models=2)
    assert every_model == pytest.approx(trained_once + 2 * trained_extra)


def test_keeping_round_ones_model_copies_its_fold_folder_once(tmp_path):
    (tmp_path / "round1" / "seed0_fold0").mkdir(parents=True)
    summary = {"name": "seed0_fold0", "val_accuracy": 0.99}
    (tmp_path / "round1" / "seed0_fold0" / "fold.json").write_text(json.dumps(summary))
    (tmp_path / "round1" / "seed0_fold0" / "val_probs.npy").write_bytes(b"probs")
    pseudo = train.Pseudo(np.zeros((0, 28, 28), np.uint8), tmp_path / "round1", 0.99, keep_first=True)
    assert pseudo.keep(tmp_path / "seed0_fold0") == summary
    assert (tmp_path / "seed0_fold0" / "val_probs.npy").read_bytes() == b"probs"
    (tmp_path / "seed0_fold0" / "val_probs.npy").write_bytes(b"resumed")  # a second call (a resume) copies nothing
    assert pseudo.keep(tmp_path / "seed0_fold0") == summary
    assert (tmp_path / "seed0_fold0" / "val_probs.npy").read_bytes() == b"resumed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round1", "seed0_fold0"]  # no temporary folder left


def test_models_train_together_when_their_recipes_agree():
    from src import model

    tuned, three_blocks, slim = (model.validate_hparams(h) for h in (config.TUNED, config.TUNED_3BLOCKS, config.SLIM))
    assert train.recipe_groups([tuned, three_blocks]) == [[0, 1]]  # fast: architectures differ, recipe the same
    assert train.recipe_groups([slim, tuned]) == [[0], [1]]  # full: another optimizer and schedule
    assert train.recipe_groups([tuned, slim, three_blocks]) == [[0, 2], [1]]
    assert train.recipe_groups([tuned, {**three_blocks, "batch_size": 64}]) == [[0], [1]]
    assert train.recipe_groups([tuned, model.validate_hparams(config.TUNED_DESKEW)]) == [[0, 1]]  # deskew: the model's
    # deskewed before the augmentation: batches of its own
    assert train.recipe_groups([tuned, model.validate_hparams(config.TUNED_DESKEW_FIRST)]) == [[0], [1]]


def fit_tiny_pair(demo_dir, run_dir, epochs: int, **kwargs) -> list[dict]:
    """train_folds of two tiny models of one recipe (different widths) on 2 folds of the demo data."""
    from src import model
    from src.config import AugmentConfig, TrainConfig

    dataset = data.load(demo_dir)
    tiny = {"filters": [8, 16], "dense": 32, "batch_size": 32, "learning_rate": 0.005}
    pair = [model.validate_hparams(tiny), model.validate_hparams({**tiny, "filters": [12, 12]})]
    return train.train_folds(dataset.train_images, dataset.train_labels, pair,
                             TrainConfig(folds=2, epochs=epochs, patience=epochs), AugmentConfig(), run_dir,
                             train.Progress(1, log=lambda line: None), **kwargs)  # fmt: skip


@pytest.mark.slow
def test_models_trained_together_end_as_each_would_alone(demo_dir, tmp_path):
    """The joint model's loss is the sum of the models' losses over disjoint weights, and each model is built from
    the same seed and sees the same batches: its predictions match training it alone."""
    lines = []
    summaries = fit_tiny_pair(demo_dir, tmp_path / "run", 2, log=lines.append)
    names = sorted(s["name"] for s in summaries)
    assert names == ["m1_seed0_fold0", "m1_seed0_fold1", "seed0_fold0", "seed0_fold1"]
    assert [line.split(" done:")[0] for line in lines] == [
        "[model 1/2 seed 0 fold 1/2]", "[m1 model 1/2 seed 0 fold 1/2]",
        "[model 2/2 seed 0 fold 2/2]", "[m1 model 2/2 seed 0 fold 2/2]",
    ]  # fmt: skip
    together = {s["name"]: s for s in summaries}
    assert together["m1_seed0_fold0"]["trained_with"] == ["seed0_fold0"]
    alone = fit_tiny(demo_dir, tmp_path / "alone", 2, {"filters": [12, 12]})  # the second model, on fold 0
    assert together["m1_seed0_fold0"]["val_accuracy"] == alone["val_accuracy"]
    joint_probs = np.load(tmp_path / "run" / "m1_seed0_fold0" / "val_probs.npy")
    assert np.array_equal(joint_probs, np.load(tmp_path / "alone" / "val_probs.npy"))  # to the bit
    # each folder holds its own model and its own curves, under a lone model's names
    history = pd.read_csv(tmp_path / "run" / "m1_seed0_fold0" / "history.csv")
    assert list(history.columns) == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"] and len(history) == 2
    alone_history = pd.read_csv(tmp_path / "alone" / "history.csv")
    assert history[["accuracy", "val_accuracy"]].equals(alone_history[["accuracy", "val_accuracy"]])
    # Keras tallies an output's loss over the epoch its own way: the same model, its logged loss a little apart
    assert np.allclose(history[["loss", "val_loss"]], alone_history[["loss", "val_loss"]], rtol=0.02)
    # --resume: of a fold with one model left to train, only that one trains
    (tmp_path / "run" / "seed0_fold1" / "fold.json").unlink()
    lines.clear()
    fit_tiny_pair(demo_dir, tmp_path / "run", 2, log=lines.append)
    assert [line.split(": ")[0] for line in lines] == [
        "[model 1/2 seed 0 fold 1/2] finished earlier", "[m1 model 1/2 seed 0 fold 1/2] finished earlier",
        "[m1 model 2/2 seed 0 fold 2/2] finished earlier", "[model 2/2 seed 0 fold 2/2] done",
    ]  # fmt: skip


def test_pseudo_labels_keep_only_the_sure_predictions():
    probs = np.array([[0.995, 0.005] + [0] * 8, [0.6, 0.4] + [0] * 8, [0.0, 0.999, 0.001] + [0] * 7], np.float32)
    rows, labels = train.pseudo_labels(probs, 0.99)
    assert rows.tolist() == [0, 2] and labels.tolist() == [0, 1]
    assert len(train.pseudo_labels(probs, 1.0)[0]) == 0


def test_each_fold_takes_pseudo_labels_from_its_own_round_one_model(tmp_path):
    """Only round 1's model of fold k never saw fold k's validation rows: its predictions, not the ensemble's."""
    test_images = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    folds = train.make_folds(np.repeat(np.arange(10), 4), 2, (0,))
    sure = np.eye(10, dtype=np.float32)[[3, 5, 7]]
    for fold, unsure_row in zip(folds, (0, 2)):
        (tmp_path / fold.name).mkdir()
        probs = sure.copy()
        probs[unsure_row] = 0.1
        np.save(tmp_path / fold.name / "test_probs.npy", probs)
    pseudo = train.Pseudo(test_images, tmp_path, 0.99)
    images, labels = pseudo.for_fold(folds[0])
    assert labels.tolist() == [5, 7] and np.array_equal(images, test_images[[1, 2]])
    assert pseudo.for_fold(folds[1])[1].tolist() == [3, 5]


def test_a_cleaned_fold_trains_without_the_left_out_rows_and_still_validates_on_them(tmp_path):
    fold = train.make_folds(np.repeat(np.arange(10), 4), 2, (0,))[0]
    left_out = np.array([fold.train_index[0], fold.val_index[0]])
    cleaned = train.Pseudo(np.zeros((0, 28, 28), np.uint8), tmp_path, 0.99, left_out).cleaned(fold)
    assert cleaned.train_index.tolist() == fold.train_index[1:].tolist()
    assert np.array_equal(cleaned.val_index, fold.val_index)  # CV still counts every row


def test_a_model_deskewed_before_augmenting_trains_on_deskewed_batches(demo_dir, tmp_path, monkeypatch):
    from src import augment, ensemble

    asked = []
    batches = augment.training_batches
    monkeypatch.setattr(augment, "training_batches", lambda *a, **k: asked.append(k["deskew"]) or batches(*a, **k))
    fit_tiny(demo_dir, tmp_path / "first", 1, {"deskew": True, "deskew_before_augment": True})
    fit_tiny(demo_dir, tmp_path / "after", 1, {"deskew": True})
    assert asked == [True, False]
    # so the saved model lets training batches through, and deskews the rest itself
    assert not ensemble.load_model(tmp_path / "first").get_layer("deskew").in_training
    assert ensemble.load_model(tmp_path / "after").get_layer("deskew").in_training


def fit_tiny(demo_dir, out_dir, epochs: int, hparams: dict | None = None, settings: dict | None = None,
             **kwargs) -> dict:  # fmt: skip
    """train_together of one tiny model on the first of 2 folds of the demo data: its summary. `settings` are
    TrainConfig fields; kwargs go to train_together."""
    from src import model
    from src.config import AugmentConfig, TrainConfig

    dataset = data.load(demo_dir)
    fold = train.make_folds(dataset.train_labels, 2, (0,))[0]
    tiny = model.validate_hparams({"filters": [8, 16], "dense": 32, "batch_size": 32, "learning_rate": 0.005,
                                   **(hparams or {})})  # fmt: skip
    [summary] = train.train_together(dataset.train_images, dataset.train_labels, fold, [(tiny, out_dir)],
                                     TrainConfig(epochs=epochs, patience=epochs, **(settings or {})), AugmentConfig(),
                                     train.Progress(1, log=lambda line: None), "[t]", **kwargs)  # fmt: skip
    return summary


@pytest.mark.slow
def test_with_ema_each_epoch_is_validated_and_kept_with_the_averaged_weights(demo_dir, tmp_path):
    """EMA momentum 0.9999 over a few steps keeps the averaged weights near their random start: if the saved
    model held the raw weights instead, it would be as good as the raw one."""
    accuracy = {ema: fit_tiny(demo_dir, tmp_path / str(ema), 4, {"ema": ema})["val_accuracy"] for ema in (0.0, 0.9999)}
    assert accuracy[0.0] > 0.7 and accuracy[0.9999] < accuracy[0.0] - 0.3


def test_a_fold_keeps_its_last_epoch_even_when_an_earlier_one_scored_better(demo_dir, tmp_path):
    """Choosing the epoch by the rows that score it would flatter the CV: the weights training ends with are kept.
    Here the convs and dense layers are scrambled before the last epoch, so that epoch scores far below the one
    before it; restoring the best epoch would score that one instead."""
    import keras

    class ScrambleBeforeLastEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                rng = np.random.default_rng(0)
                for layer in self.model.layers:
                    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
                        layer.kernel.assign(rng.normal(0, 1, layer.kernel.shape).astype("float32"))

    summary = fit_tiny(demo_dir, tmp_path / "f", 3, extra_callbacks=(ScrambleBeforeLastEpoch(),))
    val_acc = pd.read_csv(tmp_path / "f" / "history.csv").val_accuracy
    assert val_acc.iloc[1] > val_acc.iloc[2] + 0.2 and summary["best_epoch"] < 3
    assert summary["val_accuracy"] == pytest.approx(val_acc.iloc[2], abs=1e-6)
    saved = np.load(tmp_path / "f" / "val_probs.npy").argmax(1)
    labels = data.load(demo_dir).train_labels[np.load(tmp_path / "f" / "val_index.npy")]
    assert np.mean(saved == labels) == pytest.approx(val_acc.iloc[2], abs=1e-6)


def test_epochs_are_validated_on_a_fixed_stratified_sample_of_the_fold():
    labels = np.repeat(np.arange(10), 100)  # 1,000 rows, 100 of each digit
    fold = train.make_folds(labels, 2, (0,))[0]
    sample = train.epoch_validation(fold, labels, 100)
    assert len(sample) == 100 and set(sample) <= set(fold.val_index)
    assert np.bincount(labels[sample], minlength=10).tolist() == [10] * 10
    assert np.array_equal(sample, train.epoch_validation(fold, labels, 100))  # the same rows every epoch
    assert np.array_equal(train.epoch_validation(fold, labels, 0), fold.val_index)
    assert np.array_equal(train.epoch_validation(fold, labels, 10_000), fold.val_index)


def test_each_epoch_is_scored_on_the_sample_and_the_fold_on_all_its_rows(demo_dir, tmp_path):
    """Accuracies on 50 rows are multiples of 1/50; on the fold's 629 rows they almost never are."""
    summary = fit_tiny(demo_dir, tmp_path / "f", 3, settings={"epoch_val_rows": 50})
    per_epoch = pd.read_csv(tmp_path / "f" / "history.csv").val_accuracy.to_numpy()
    assert np.allclose(per_epoch * 50, np.round(per_epoch * 50), atol=1e-4)
    val_index = np.load(tmp_path / "f" / "val_index.npy")
    saved = np.load(tmp_path / "f" / "val_probs.npy")
    labels = data.load(demo_dir).train_labels[val_index]
    assert len(saved) == len(val_index) == 629 and summary["epoch_val_rows"] == 50
    assert summary["val_accuracy"] == pytest.approx(np.mean(saved.argmax(1) == labels), abs=1e-9)
    assert not np.isclose(summary["val_accuracy"] * 50, round(summary["val_accuracy"] * 50), atol=1e-4)


@pytest.mark.slow
def test_a_warm_start_fine_tunes_the_given_model_instead_of_fresh_weights(demo_dir, tmp_path):
    """One epoch from a trained fold's weights is far better than one epoch from fresh ones."""
    trained = fit_tiny(demo_dir, tmp_path / "trained", 5)
    fresh = fit_tiny(demo_dir, tmp_path / "fresh", 1)
    warm = fit_tiny(demo_dir, tmp_path / "warm", 1, start_from=tmp_path / "trained")
    assert trained["val_accuracy"] > 0.8 and warm["warm_start"] == str(tmp_path / "trained")
    assert warm["val_accuracy"] > fresh["val_accuracy"] + 0.2 and fresh["warm_start"] is None


def test_only_a_model_with_a_round_one_twin_starts_warm(tmp_path):
    (tmp_path / "seed0_fold0").mkdir()
    (tmp_path / "seed0_fold0" / "model.keras").write_bytes(b"")
    pseudo = train.Pseudo(np.zeros((0, 28, 28), np.uint8), tmp_path, 0.99, warm=True)
    assert pseudo.start_from("seed0_fold0") == tmp_path / "seed0_fold0" and pseudo.start_from("m1_seed0_fold0") is None
    assert train.Pseudo(pseudo.test_images, tmp_path, 0.99).start_from("seed0_fold0") is None  # warm off


def test_round_two_trains_its_own_epochs_and_the_eta_counts_them():
    warm = dataclasses.replace(PRESETS["fast"].train, pseudo=0.99, warm=True, pseudo_epochs=2)
    assert train.round_two(warm).epochs == 2 and train.round_two(PRESETS["fast"].train).epochs == 8
    assert train.planned_images(warm, 42_000, 28_000) == 3 * 8 * 28_000 + 3 * 2 * (28_000 + 0.95 * 28_000)
