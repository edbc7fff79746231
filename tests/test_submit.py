"""The main job end to end, and the submission file's validator and atomic, never-overwriting writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src import config, model, publish, submit
from src.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]


def submit_env() -> dict[str, str]:
    """No competition data for the subprocess: it runs on the demo dataset."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "DIGITS_DATA_DIR": ""}


def run_submit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.submit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=submit_env())  # fmt: skip


def submit_here(*args: str, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    """(exit status, what it printed on stdout then stderr): the main job as run_submit runs it, but in this
    process, which has TensorFlow imported already (a new process spends 10-15 s of CPU importing it)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("DIGITS_DATA_DIR", "")
    capsys.readouterr()
    status = run_cli(submit.main, list(args))
    printed = capsys.readouterr()
    return status, printed.out + printed.err  # a failure's one-line error is on stderr


DEMO_ARGS = ("--preset", "smoke", "--folds", "2", "--epochs", "6", "--out", "subs")


@pytest.fixture(scope="module")
def demo_submission(tmp_path_factory) -> tuple[Path, str]:
    """(the folder it ran in, what it printed): the main job on the demo set, run once as a user runs it."""
    folder = tmp_path_factory.mktemp("whole")
    result = run_submit(*DEMO_ARGS, cwd=folder)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder, result.stdout


@pytest.mark.slow
def test_demo_run_end_to_end_is_reproducible(demo_submission, tmp_path, monkeypatch, capsys):
    """No competition data: the main job says so, trains on the demo set and writes a valid submission."""
    folder, printed = demo_submission
    assert "no competition data found" in printed
    assert "epoch 6/6" in printed and "ETA" in printed
    written = sorted((folder / "subs").glob("*_smoke_demo_cv*.csv"))
    assert len(written) == 1
    meta = json.loads(written[0].with_suffix(".json").read_text())
    assert meta["data"]["demo"] is True and len(meta["cv_per_fold"]) == 2
    assert meta["cv_accuracy"] > 0.5  # six short epochs on 1,258 digits: far above chance (0.1)
    frame = pd.read_csv(folder / "subs" / "submission.csv")
    publish.validate_submission(frame, 539)

    shutil.copytree(folder / "subs", tmp_path / "subs")
    status, printed = submit_here(*DEMO_ARGS, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 0, printed[-2000:]
    again = sorted((tmp_path / "subs").glob("*_smoke_demo_cv*.csv"))
    assert len(again) == 2  # a new file: the first one is kept
    assert again[0].read_text() == again[1].read_text()  # same seed and preset -> same submission


@pytest.mark.slow
def test_kill_9_mid_fold_then_resume_gives_the_same_submission(demo_submission, tmp_path, monkeypatch, capsys):
    whole, _ = demo_submission
    killed = tmp_path / "killed"
    killed.mkdir()
    process = subprocess.Popen([sys.executable, "-m", "src.submit", *DEMO_ARGS], cwd=killed, env=submit_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    history = None
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        history = next(killed.glob("runs/*/seed0_fold1/history.csv"), None)
        if history is not None and len(history.read_text().splitlines()) >= 2:  # mid second fold: an epoch done
            break
        time.sleep(0.2)
    process.kill()  # SIGKILL: no cleanup of any kind
    process.wait()
    assert history is not None and not (history.parent / "fold.json").exists()
    assert not (history.parent / "model.keras").exists()  # killed mid-fold: resume trains that fold again
    assert not (killed / "subs").exists()
    run_dir = history.parent.parent
    status, printed = submit_here("--resume", run_dir.name, "--out", "subs", cwd=killed, monkeypatch=monkeypatch,
                                  capsys=capsys)  # fmt: skip
    assert status == 0 and "fold 1/2] finished earlier" in printed, printed[-2000:]
    assert (killed / "subs" / "submission.csv").read_text() == (whole / "subs" / "submission.csv").read_text()


def test_resume_of_a_damaged_or_foreign_run_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{not json")
    assert run_cli(submit.main, ["--resume", str(run_dir)]) == 2
    assert "config.json: not valid JSON" in capsys.readouterr().err
    config = {"preset": "smoke", "train": {"folds": 2, "seeds": [0], "warp_speed": 9}, "augment": {},
              "hparams": {}, "hparams_source": "defaults", "data": {"folder": "x"}}  # fmt: skip
    (run_dir / "config.json").write_text(json.dumps(config))
    assert run_cli(submit.main, ["--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "unknown setting 'warp_speed'" in err and len(err.strip().splitlines()) == 1


def test_a_run_saved_before_a_hyperparameter_existed_resumes_with_its_default(tmp_path):
    older = {key: value for key, value in model.DEFAULT_HPARAMS.items() if key != "ema"}
    config = {"preset": "fast", "train": {"folds": 3, "seeds": [0], "pseudo": 0.99}, "augment": {},
              "hparams": older, "hparams_source": "preset fast", "data": {"folder": "x"}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    spec = submit.spec_from_run(tmp_path)
    assert spec.hparams["ema"] == 0.0 and spec.train.pseudo == 0.99 and spec.train.clean is False


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


@pytest.mark.slow
def test_smoke_on_a_slice_of_the_real_data(real_slice, tmp_path):
    argv = ["--data-dir", str(real_slice), "--preset", "smoke", "--epochs", "15", "--runs-dir", str(tmp_path / "runs"),
            "--out", str(tmp_path / "subs")]  # fmt: skip
    assert submit.main(argv) == 0  # in this process: the demo tests above run the command itself
    meta = json.loads(next((tmp_path / "subs").glob("*_smoke_cv*.json")).read_text())
    assert meta["data"]["demo"] is False and meta["data"]["hashes"]
    assert meta["cv_accuracy"] > 0.8  # 1,500 real digits, 2 folds of 750, 15 epochs of 6 batches
    publish.validate_submission(pd.read_csv(tmp_path / "subs" / "submission.csv"), 300)


def test_a_preset_can_point_at_a_committed_tuned_file(tmp_path, monkeypatch):
    from src import config

    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"dense": 256, "dropout": 0.3}))
    preset = config.Preset("tuned", config.TrainConfig(), hparams_file=str(tuned))
    monkeypatch.setitem(config.PRESETS, "tuned", preset)
    spec = submit.spec_from_args(submit.parse_args(["--preset", "tuned"]))
    assert spec.hparams["dense"] == 256 and spec.hparams_source == str(tuned)


@pytest.mark.slow
def test_pseudo_labels_train_a_second_round_scored_on_train_rows_only(tmp_path, monkeypatch, capsys):
    """Round 2 trains on train + sure test rows (less --clean's rows), with a second, different model per fold;
    with --warm its first model fine-tunes round 1's model of the fold for --pseudo-epochs."""
    (tmp_path / "small.json").write_text(json.dumps({"filters": [8, 16], "convs_per_block": 1}))
    status, printed = submit_here("--preset", "smoke", "--folds", "2", "--epochs", "6", "--pseudo", "0.5", "--clean",
                                  "--warm", "--pseudo-epochs", "3", "--extra-hparams", "small.json", "--out", "subs",
                                  cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    assert status == 0, printed[-2000:]
    assert "round 2 also trains on the test images" in printed and "pseudo-labelled test images" in printed
    assert "and 1 more model per fold;" in printed.split("run: ", 1)[1].splitlines()[0]
    left_out = int(re.search(r"round 2 leaves out (\d+) training rows", printed).group(1))
    etas = [line.rsplit("ETA ", 1)[1] for line in printed.splitlines() if "/epoch, ETA " in line]
    assert len(etas) == 2 * 6 + 2 * 2 * 3 and etas[-1] == "0s"  # one ETA over both rounds (round 2: two models)
    meta = json.loads(next((tmp_path / "subs").glob("*_smoke_demo_cv*.json")).read_text())
    run = Path(meta["run"]) if Path(meta["run"]).is_absolute() else tmp_path / meta["run"]
    round_one = json.loads((run / "round1" / "cv.json").read_text())
    assert meta["round1_cv_accuracy"] == round_one["cv_accuracy"] and meta["train"]["pseudo"] == 0.5
    folds = [json.loads((run / f"seed0_fold{k}" / "fold.json").read_text()) for k in (0, 1)]
    assert all(0 < f["pseudo_rows"] <= 539 for f in folds)  # some of the demo's 539 test images, never more
    assert [Path(f["warm_start"]).name for f in folds] == ["seed0_fold0", "seed0_fold1"]
    assert all(Path(f["warm_start"]).parent.name == "round1" and f["epochs_run"] == 3 for f in folds)
    # --clean: each left-out row was in the training part of the other fold, and is gone from it
    before = [1258 - len(np.load(run / f"seed0_fold{k}" / "val_index.npy")) for k in (0, 1)]
    assert 0 < left_out < 300 and sum(b - f["train_rows"] for b, f in zip(before, folds)) == left_out
    cv = json.loads((run / "cv.json").read_text())
    assert cv["oof_rows"] == 1258 and meta["cv_accuracy"] == cv["cv_accuracy"]  # scored on train rows only

    # the extra model: round 2 only, on every fold, with the same rows and pseudo-labels; the run averages both
    assert sorted(p.name for p in (run / "round1").glob("*_fold*")) == ["seed0_fold0", "seed0_fold1"]
    assert sorted(p.name for p in run.glob("*_fold*")) == ["m1_seed0_fold0", "m1_seed0_fold1", "seed0_fold0",
                                                           "seed0_fold1"]  # fmt: skip
    assert meta["extra_hparams"][0]["filters"] == [8, 16] != meta["hparams"]["filters"] and cv["models"] == 4
    for k, first in enumerate(folds):
        extra = json.loads((run / f"m1_seed0_fold{k}" / "fold.json").read_text())
        assert (extra["pseudo_rows"], extra["train_rows"]) == (first["pseudo_rows"], first["train_rows"])
        assert extra["warm_start"] is None  # no round-1 twin: it starts fresh
        both = [np.load(run / f"{m}seed0_fold{k}" / "val_probs.npy") for m in ("", "m1_")]
        val_index = np.load(run / f"seed0_fold{k}" / "val_index.npy")
        np.testing.assert_allclose(np.load(run / "oof_probs.npy")[val_index], (both[0] + both[1]) / 2, atol=1e-6)
    status, printed = submit_here("--resume", str(run), "--out", "subs", cwd=tmp_path, monkeypatch=monkeypatch,
                                  capsys=capsys)  # fmt: skip
    assert status == 0 and printed.count("finished earlier") == 6, printed[-2000:]  # round 1's two, round 2's four


@pytest.mark.slow
def test_keep_round1_trains_only_the_extra_model_in_round_two(tmp_path, monkeypatch, capsys):
    """full's way: round 1's fold models of the first model stay as they are, beside round 2's extra model."""
    (tmp_path / "small.json").write_text(json.dumps({"filters": [8, 16], "convs_per_block": 1}))
    status, printed = submit_here("--preset", "smoke", "--folds", "2", "--epochs", "6", "--pseudo", "0.5",
                                  "--pseudo-epochs", "3", "--keep-round1", "--extra-hparams", "small.json",
                                  "--out", "subs", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)  # fmt: skip
    assert status == 0, printed[-2000:]
    assert printed.count("kept from round 1") == 2 and printed.count("pseudo-labelled test images") == 2
    etas = [line.rsplit("ETA ", 1)[1] for line in printed.splitlines() if "/epoch, ETA " in line]
    assert len(etas) == 2 * 6 + 2 * 3 and etas[-1] == "0s"  # round 1's model, then the extra one only
    meta = json.loads(next((tmp_path / "subs").glob("*_smoke_demo_cv*.json")).read_text())
    run = Path(meta["run"]) if Path(meta["run"]).is_absolute() else tmp_path / meta["run"]
    assert meta["train"]["keep_round1"] is True
    cv = json.loads((run / "cv.json").read_text())
    assert cv["models"] == 4 and cv["oof_rows"] == 1258 and meta["cv_accuracy"] == cv["cv_accuracy"]
    for k in (0, 1):
        kept, first = run / f"seed0_fold{k}", run / "round1" / f"seed0_fold{k}"
        assert (kept / "model.keras").read_bytes() == (first / "model.keras").read_bytes()
        assert json.loads((kept / "fold.json").read_text())["pseudo_rows"] == 0  # round 1's, untouched
        extra = json.loads((run / f"m1_seed0_fold{k}" / "fold.json").read_text())
        assert 0 < extra["pseudo_rows"] <= 539 and extra["epochs_run"] == 3
        both = [np.load(run / f"{m}seed0_fold{k}" / "val_probs.npy") for m in ("", "m1_")]
        val_index = np.load(kept / "val_index.npy")
        np.testing.assert_allclose(np.load(run / "oof_probs.npy")[val_index], (both[0] + both[1]) / 2, atol=1e-6)
    status, printed = submit_here("--resume", str(run), "--out", "subs", cwd=tmp_path, monkeypatch=monkeypatch,
                                  capsys=capsys)  # fmt: skip
    assert status == 0 and printed.count("finished earlier") == 4 and printed.count("kept from round 1") == 2


def test_presets_add_their_second_model_and_extra_hparams_with_no_file_removes_it():
    full = submit.spec_from_args(submit.parse_args(["--preset", "full"]))
    assert full.extra_hparams == (model.validate_hparams(config.TUNED_DESKEW_FIRST),) and not full.hparams["deskew"]
    assert full.extra_hparams[0]["deskew"] and full.extra_hparams[0]["deskew_before_augment"]
    alone = submit.spec_from_args(submit.parse_args(["--preset", "full", "--extra-hparams", "--no-keep-round1"]))
    assert alone.extra_hparams == () and not alone.train.keep_round1 and full.train.keep_round1
    fast = submit.spec_from_args(submit.parse_args(["--preset", "fast"]))
    assert fast.hparams == model.validate_hparams(config.TUNED)  # on raw digits, the second on deskewed ones
    assert fast.extra_hparams == (model.validate_hparams({**config.TUNED, "deskew": True}),)  # after augmenting
    assert not fast.extra_hparams[0]["deskew_before_augment"]  # so the two train together
    assert submit.spec_from_args(submit.parse_args(["--preset", "smoke"])).extra_hparams == ()


def test_a_missing_extra_hparams_file_is_one_line(tmp_path):
    missing = run_submit("--extra-hparams", "nope.json", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.json" in missing.stderr


def test_too_few_rows_to_validate_epochs_on_is_one_line(tmp_path):
    result = run_submit("--epoch-val-rows", "5", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: --epoch-val-rows 5: 0 (every row) or at least 100")


def test_pseudo_threshold_out_of_range_is_one_line(tmp_path):
    result = run_submit("--pseudo", "1.5", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--pseudo 1.5" in result.stderr
    result = run_submit("--warm", cwd=tmp_path)
    assert result.returncode == 2 and "--warm and --pseudo-epochs need --pseudo" in result.stderr
    result = run_submit("--pseudo", "0.99", "--keep-round1", "--extra-hparams", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "--keep-round1 needs --pseudo P and --extra-hparams FILE" in result.stderr
    result = run_submit("--preset", "full", "--warm", cwd=tmp_path)
    assert result.returncode == 2 and "--keep-round1 keeps round 1's first model as it is, --warm" in result.stderr
    result = run_submit("--clean", cwd=tmp_path)
    assert (
        result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "--clean needs --pseudo" in result.stderr
    )
