"""KerasTuner search: the space's defaults are the untuned model, and its result feeds the main job."""

from __future__ import annotations

import json

import keras_tuner as kt
import pandas as pd
import pytest

from src import model, submit, tune
from src.errors import DigitsError


def test_search_space_defaults_are_the_untuned_model():
    assert tune.search_space(kt.HyperParameters()) == model.validate_hparams({})


def test_deep_valid_stacks_switch_to_same_padding():
    hp = kt.HyperParameters()
    hp.Fixed("blocks", 3)
    hp.Fixed("convs_per_block", 3)
    hparams = tune.search_space(hp)
    assert hparams["padding"] == "same" and len(hparams["filters"]) == 3


def test_two_trial_search_writes_hparams_that_submit_accepts(demo_dir, tmp_path, capsys):
    out = tmp_path / "search"
    argv = ["--tuner", "random", "--max-trials", "2", "--epochs", "1", "--max-rows", "400", "--max-mmacs", "0",
            "--data-dir", str(demo_dir), "--out", str(out)]  # fmt: skip
    assert tune.main(argv) == 0
    assert "top 5:" in capsys.readouterr().out
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 2 and trials.score.between(0, 1).all() and (trials.epochs == 1).all()
    best = json.loads((out / "best_hparams.json").read_text())
    results = [json.loads(p.read_text()) for p in (out / "search" / "trials").glob("*/result.json")]
    assert best == max(results, key=lambda r: r["score"])["hparams"]  # the winner, whatever order trials ran in
    assert set(best) == set(model.DEFAULT_HPARAMS)

    # Running the same command again continues the search: nothing new once max-trials is reached...
    written = {p: p.stat().st_mtime_ns for p in (out / "search" / "trials").glob("*/result.json")}
    assert tune.main(argv) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 2
    assert {p: p.stat().st_mtime_ns for p in written} == written  # no trial ran again
    # A larger budget, but no time left: it stops before the next trial and keeps what it found.
    capsys.readouterr()
    assert tune.main([*argv[:3], "5", *argv[4:], "--max-minutes", "0"]) == 0
    assert "--max-minutes 0.0 spent" in capsys.readouterr().out
    assert len(pd.read_csv(out / "trials.csv")) == 2 and (out / "best_hparams.json").is_file()

    spec = submit.spec_from_args(submit.parse_args(["--hparams", str(out / "best_hparams.json")]))
    assert spec.hparams == best and spec.hparams_source.endswith("best_hparams.json")

    # ...while --overwrite starts over: the trials run afresh.
    assert tune.main([*argv, "--overwrite"]) == 0
    assert len(pd.read_csv(out / "trials.csv")) == 2
    assert all(p.stat().st_mtime_ns != mtime for p, mtime in written.items() if p.exists())


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


def test_hyperband_sets_the_epochs_of_each_trial(demo_dir, tmp_path):
    out = tmp_path / "hb"
    argv = ["--tuner", "hyperband", "--epochs", "2", "--max-rows", "300", "--cv", "2", "--max-mmacs", "0",
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
