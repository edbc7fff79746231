"""The main job end to end, and the submission file's validator and atomic, never-overwriting writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src import submit
from src.errors import DigitsError

ROOT = Path(__file__).resolve().parents[1]


def run_submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.submit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "DIGITS_DATA_DIR": ""},
    )


def test_validator_accepts_a_good_submission_and_names_what_is_wrong():
    good = submit.make_submission(np.array([3, 1, 4]))
    submit.validate_submission(good, 3)
    with pytest.raises(DigitsError, match="3 rows, but the test set has 4"):
        submit.validate_submission(good, 4)
    with pytest.raises(DigitsError, match="line 3: ImageId must be 2"):
        submit.validate_submission(good.assign(ImageId=[1, 3, 2]), 3)
    with pytest.raises(DigitsError, match="line 4: Label 10 is outside 0-9"):
        submit.validate_submission(good.assign(Label=[1, 2, 10]), 3)
    with pytest.raises(DigitsError, match="columns must be ImageId,Label"):
        submit.validate_submission(good.rename(columns={"Label": "label"}), 3)


def test_write_submission_is_atomic_and_never_overwrites(tmp_path):
    frame = submit.make_submission(np.arange(10) % 10)
    path = submit.write_submission(frame, 10, tmp_path, "first", {"cv": 0.5})
    assert pd.read_csv(path).equals(frame)
    assert (tmp_path / "submission.csv").read_text() == path.read_text()
    assert json.loads((tmp_path / "first.json").read_text()) == {"cv": 0.5}
    with pytest.raises(DigitsError, match="first.csv: already exists; refusing to overwrite"):
        submit.write_submission(submit.make_submission(np.zeros(10, int)), 10, tmp_path, "first", {})
    assert pd.read_csv(path).equals(frame)  # untouched
    with pytest.raises(DigitsError, match="rows"):  # invalid: nothing is written at all
        submit.write_submission(frame, 11, tmp_path, "second", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.csv", "first.json", "submission.csv"]


def test_demo_run_end_to_end_is_reproducible(tmp_path):
    """No competition data: the main job says so, trains on the demo set and writes a valid submission."""
    args = ["--preset", "smoke", "--folds", "2", "--epochs", "6", "--out", "subs"]
    first = run_submit(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "no competition data found" in first.stdout
    assert "epoch 6/6" in first.stdout and "ETA" in first.stdout
    written = sorted((tmp_path / "subs").glob("*_smoke_demo_cv*.csv"))
    assert len(written) == 1
    meta = json.loads(written[0].with_suffix(".json").read_text())
    assert meta["data"]["demo"] is True and len(meta["cv_per_fold"]) == 2
    assert meta["cv_accuracy"] > 0.5  # six short epochs on 1,258 digits: far above chance (0.1)
    frame = pd.read_csv(tmp_path / "subs" / "submission.csv")
    submit.validate_submission(frame, 539)

    second = run_submit(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    again = sorted((tmp_path / "subs").glob("*_smoke_demo_cv*.csv"))
    assert len(again) == 2  # a new file: the first one is kept
    assert again[0].read_text() == again[1].read_text()  # same seed and preset -> same submission


def test_resume_skips_finished_folds(tmp_path):
    first = run_submit("--preset", "smoke", "--folds", "2", "--epochs", "1", "--out", "subs", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_dir = next((tmp_path / "runs").glob("*_smoke_demo"))
    (run_dir / "seed0_fold1" / "fold.json").unlink()  # as if interrupted during the second fold
    resumed = run_submit("--resume", run_dir.name, "--out", "subs", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "fold 1/2] finished earlier" in resumed.stdout
    assert "[model 2/2 seed 0 fold 2/2] epoch 1/1" in resumed.stdout
    assert (run_dir / "seed0_fold1" / "fold.json").exists()


def test_bad_input_is_one_line_and_nonzero(tmp_path, demo_dir):
    broken = tmp_path / "data"
    broken.mkdir()
    lines = (demo_dir / "train.csv").read_text().splitlines()
    lines[4] = lines[4].replace(",0,", ",x,", 1)
    (broken / "train.csv").write_text("\n".join(lines) + "\n")
    (broken / "test.csv").write_text((demo_dir / "test.csv").read_text())
    result = run_submit("--data-dir", str(broken), "--preset", "smoke", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: train.csv: line 5, column pixel")
    bad_hparams = tmp_path / "h.json"
    bad_hparams.write_text('{"dropout": 0.3, "filterz": [8]}')
    result = run_submit("--hparams", str(bad_hparams), cwd=tmp_path)
    assert result.returncode == 2 and "unknown hyperparameter 'filterz'" in result.stderr
    assert not (tmp_path / "submissions").exists()


def test_smoke_on_a_slice_of_the_real_data(real_slice, tmp_path):
    result = run_submit(
        "--data-dir", str(real_slice), "--preset", "smoke", "--epochs", "6", "--out", "subs", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads(next((tmp_path / "subs").glob("*_smoke_cv*.json")).read_text())
    assert meta["data"]["demo"] is False and meta["data"]["hashes"]
    assert meta["cv_accuracy"] > 0.8  # 1,500 real digits, 2 folds of 750, 6 short epochs
    submit.validate_submission(pd.read_csv(tmp_path / "subs" / "submission.csv"), 300)


def test_a_preset_can_point_at_a_committed_tuned_file(tmp_path, monkeypatch):
    from src import config

    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"dense": 256, "dropout": 0.3}))
    preset = config.Preset("tuned", config.TrainConfig(), hparams_file=str(tuned))
    monkeypatch.setitem(config.PRESETS, "tuned", preset)
    spec = submit.spec_from_args(submit.parse_args(["--preset", "tuned"]))
    assert spec.hparams["dense"] == 256 and spec.hparams_source == str(tuned)
