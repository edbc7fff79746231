"""KerasTuner search: the space's defaults are the untuned model, and its result feeds the main job."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import keras_tuner as kt
import numpy as np
import pandas as pd
import pytest

from src import model, submit, train, tune
from src.config import PRESETS
from src.errors import DigitsError


def test_search_space_defaults_are_the_untuned_model():
    assert tune.search_space(kt.HyperParameters()) == model.validate_hparams({})


def test_search_space_defaults_can_be_a_presets_model():
    fast = model.validate_hparams(PRESETS["fast"].hparams)
    assert tune.search_space(kt.HyperParameters(), fast) == fast
    second = model.validate_hparams(PRESETS["full"].extra_hparams[0])  # deskewed before augmenting
    assert tune.search_space(kt.HyperParameters(), second) == second
    raw = kt.HyperParameters()
    raw.Fixed("deskew", False)  # a trial on raw digits has nothing to deskew before augmenting
    assert not tune.search_space(raw, second)["deskew_before_augment"]


def test_deep_valid_stacks_switch_to_same_padding():
    hp = kt.HyperParameters()
    hp.Fixed("blocks", 3)
    hp.Fixed("convs_per_block", 3)
    hparams = tune.search_space(hp)
    assert hparams["padding"] == "same" and len(hparams["filters"]) == 3


@pytest.mark.slow
def test_two_trial_search_writes_hparams_that_submit_accepts(demo_dir, tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["--preset", "smoke", "--tuner", "random", "--max-trials", "2", "--epochs", "1", "--max-rows", "400",
            "--max-mmacs", "0", "--data-dir", str(demo_dir), "--out", str(out)]  # fmt: skip
    assert tune.main(argv) == 0
    printed = capsys.readouterr().out
    assert "top 5:" in printed and "trial 0 starts" in printed and "trial 1 starts" in printed
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials.trial) == [0, 1] and (trials.status == "COMPLETED").all()
    assert trials.score.between(0, 1).all() and (trials.epochs == 1).all()
    best = json.loads((out / "best_hparams.json").read_text())
    winner = trials.iloc[trials.score.argmax()]
    assert best["learning_rate"] == pytest.approx(winner.learning_rate) and best["optimizer"] == winner.optimizer
    assert set(best) == set(model.DEFAULT_HPARAMS)
    baseline = trials[trials.trial == 0].iloc[0]  # the first trial is the preset's own model
    smoke = model.validate_hparams(PRESETS["smoke"].hparams)
    assert (baseline.learning_rate, baseline.batch_size, baseline.aug_strength) == (
        smoke["learning_rate"], smoke["batch_size"], smoke["aug_strength"])  # fmt: skip
    assert "the preset's own model (trial 0) scored" in printed

    # Running the same command again continues the search: nothing new once max-trials is reached...
    assert tune.main(argv) == 0
    assert "starts" not in capsys.readouterr().out  # no trial ran again
    assert len(pd.read_csv(out / "trials.csv")) == 2
    # A larger budget, but no time left: the oracle hands out no new trial, and what was found is kept.
    assert tune.main([*argv[:5], "5", *argv[6:], "--max-minutes", "0"]) == 0
    printed = capsys.readouterr().out
    assert "--max-minutes 0.0 spent" in printed and "starts" not in printed
    assert len(pd.read_csv(out / "trials.csv")) == 2 and (out / "best_hparams.json").is_file()

    spec = submit.spec_from_args(submit.parse_args(["--hparams", str(out / "best_hparams.json")]))
    assert spec.hparams == best and spec.hparams_source.endswith("best_hparams.json")

    # ...while --overwrite starts over: the trials run afresh.
    assert tune.main([*argv, "--overwrite"]) == 0
    assert capsys.readouterr().out.count("starts") == 2
    assert len(pd.read_csv(out / "trials.csv")) == 2


def test_trials_are_scored_on_the_presets_own_folds():
    labels = np.repeat(np.arange(10), 30)
    run_folds = train.make_folds(labels, 3, (0,))
    folds = tune.preset_folds(labels, 3, 2, 0)
    assert len(folds) == 2
    for got, run in zip(folds, run_folds):
        assert np.array_equal(got.val_index, run.val_index)  # the rows the run's fold validates on
    with pytest.raises(DigitsError, match="--folds 4: the preset 'fast' has 3 folds"):
        tune.main(["--preset", "fast", "--folds", "4"])


def run_local_search(out, demo_dir, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "src.tune", "--workers", "2", "--preset", "smoke", "--tuner", "random",
            "--max-mmacs", "0", "--data-dir", str(demo_dir), "--out", str(out), *extra]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def starts(out) -> list[str]:
    """The trial ids the workers started, one entry per start, from their logs."""
    logs = "".join(p.read_text() for p in sorted((out / "logs").glob("tuner*.log")))
    return re.findall(r"\] trial (\d+) starts", logs)


@pytest.mark.slow
def test_a_chief_and_two_workers_run_every_trial_exactly_once(demo_dir, tmp_path):
    out = tmp_path / "dist"
    search = run_local_search(out, demo_dir, "--max-trials", "4", "--epochs", "1", "--max-rows", "300")
    printed, _ = search.communicate(timeout=600)
    assert search.returncode == 0, printed
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials.trial) == [0, 1, 2, 3] and (trials.status == "COMPLETED").all()
    assert sorted(starts(out)) == ["0", "1", "2", "3"]  # no trial ran twice
    assert model.validate_hparams(json.loads((out / "best_hparams.json").read_text()))
    for worker in ("tuner1", "tuner2"):  # each asked the chief for work and was told to stop
        assert f"{worker}: the chief has no more trials; done" in printed
    assert re.search(r"\d+ trials/hour", printed)


@pytest.mark.slow
def test_a_killed_worker_loses_only_its_trial(demo_dir, tmp_path):
    out = tmp_path / "killed"
    search = run_local_search(out, demo_dir, "--max-trials", "3", "--epochs", "3", "--max-rows", "600")
    lines = []
    pid = None
    for line in search.stdout:  # wait for tuner1 to be in the middle of a trial, then kill it
        lines.append(line)
        announced = re.search(r"tuner1 \(pid (\d+)", line)
        pid = int(announced.group(1)) if announced and pid is None else pid
        if re.search(r"tuner1 \| \[trial \d+ fold 1/1\] epoch 1/3", line):
            os.kill(pid, signal.SIGKILL)
            break
    printed = "".join(lines) + search.communicate(timeout=600)[0]
    assert search.returncode == 0, printed
    assert "tuner1 exited with -9: starting it again" in printed
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(trials.trial) == [0, 1, 2] and (trials.status == "COMPLETED").all()  # recorded once each
    started = starts(out)
    assert sorted(set(started)) == ["0", "1", "2"] and len(started) == 4  # the killed trial, and only it, ran again


def test_max_minutes_stops_cleanly(demo_dir, tmp_path, capsys):
    argv = ["--tuner", "random", "--max-trials", "5", "--epochs", "1", "--max-rows", "300", "--max-minutes", "0",
            "--data-dir", str(demo_dir), "--out", str(tmp_path / "s")]  # fmt: skip
    assert tune.run_cli(tune.main, argv) == 2
    assert "no trial finished" in capsys.readouterr().err


def test_malformed_hparams_file_is_refused_naming_the_key(tmp_path):
    bad = tmp_path / "best_hparams.json"
    bad.write_text(json.dumps({**model.DEFAULT_HPARAMS, "learning_rate": "fast"}))
    with pytest.raises(DigitsError, match="'learning_rate' = 'fast'"):
        submit.spec_from_args(submit.parse_args(["--hparams", str(bad)]))


@pytest.mark.slow
def test_hyperband_sets_the_epochs_of_each_trial(demo_dir, tmp_path):
    out = tmp_path / "hb"
    argv = ["--preset", "smoke", "--tuner", "hyperband", "--epochs", "2", "--max-rows", "300", "--folds", "2",
            "--max-mmacs", "0",
            "--data-dir", str(demo_dir), "--out", str(out)]  # fmt: skip
    assert tune.main(argv) == 0
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) >= 2 and set(trials.epochs) <= {1, 2}
    assert model.validate_hparams(json.loads((out / "best_hparams.json").read_text()))


def test_compute_budget_skips_big_models_without_training(demo_dir, tmp_path, capsys):
    assert tune.forward_mmacs(model.validate_hparams({})) == pytest.approx(15.16, abs=0.01)
    argv = ["--tuner", "random", "--max-trials", "2", "--epochs", "1", "--max-rows", "300", "--max-mmacs", "0.01",
            "--data-dir", str(demo_dir), "--out", str(tmp_path / "s")]  # fmt: skip
    assert tune.run_cli(tune.main, argv) == 2
    assert "no trial finished (2 over --max-mmacs)" in capsys.readouterr().err
    assert (pd.read_csv(tmp_path / "s" / "trials.csv").epochs == 0).all()
