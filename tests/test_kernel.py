"""The Kaggle kernel: one self-contained script, regenerated from src/, that runs with nothing else."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from src import kernel, publish

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "kernels" / "digit-recognizer"


def test_committed_bundle_is_fresh_against_src():
    text = (BUNDLE / "kernel.py").read_text()
    preset = re.search(r"^DEFAULT_PRESET = '(\w+)'$", text, re.M).group(1)
    assert text == kernel.render(preset), "kernels/ is stale: run python -m src.kernel build --user <you>"


def test_metadata_is_what_the_kaggle_cli_needs():
    meta = json.loads((BUNDLE / "kernel-metadata.json").read_text())
    assert meta["code_file"] == "kernel.py" and meta["language"] == "python" and meta["kernel_type"] == "script"
    assert meta["competition_sources"] == ["digit-recognizer"]
    assert meta["enable_gpu"] is True and meta["enable_internet"] is False and meta["is_private"] is True
    assert re.fullmatch(r"[\w-]+/[\w-]+", meta["id"])


def test_build_needs_a_user(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-token"))
    assert kernel.run_cli(kernel.main, ["build", "--out", str(tmp_path)]) == 2
    assert "pass --user NAME, set KAGGLE_USERNAME" in capsys.readouterr().err
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    assert kernel.main(["build", "--out", str(tmp_path), "--preset", "smoke"]) == 0
    assert json.loads((tmp_path / "kernel-metadata.json").read_text())["id"].startswith("alice/")


@pytest.mark.slow
def test_bundled_script_runs_alone_from_a_temporary_folder(tmp_path, real_slice):
    alone = tmp_path / "alone"
    kernel.build(alone, "alice", "smoke")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIGITS_DATA_DIR")}
    result = subprocess.run(
        [sys.executable, "kernel.py", "--data-dir", str(real_slice), "--out", "out", "--folds", "2", "--epochs", "1"],
        cwd=alone, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[model 2/2 seed 0 fold 2/2] epoch 1/1" in result.stdout
    publish.validate_submission(pd.read_csv(alone / "out" / "submission.csv"), 300)
    assert not (alone / "src").exists()
    assert (alone / "digits_kit" / "src" / "submit.py").read_text() == (ROOT / "src" / "submit.py").read_text()


def test_build_reads_the_user_from_the_kaggle_token(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "conf"))
    out = tmp_path / "bundle"
    assert kernel.run_cli(kernel.main, ["build", "--out", str(out)]) == 2
    assert "no Kaggle user" in capsys.readouterr().err and not out.exists()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "kaggle.json").write_text(json.dumps({"username": "carol", "key": "x"}))
    assert kernel.main(["build", "--out", str(out)]) == 0
    assert json.loads((out / "kernel-metadata.json").read_text())["id"].startswith("carol/")
