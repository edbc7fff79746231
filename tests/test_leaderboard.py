"""Leaderboard commands against a fake `kaggle` executable that records its arguments (no network)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from src import leaderboard, registry, submit

CANNED = """fileName,date,description,status,publicScore,privateScore
first.csv,2026-11-20 10:00:00,try | cv=0.99,complete,0.99171,0.99171
unknown.csv,2026-11-19 10:00:00,old,complete,0.98000,0.98000
"""


@pytest.fixture
def fake_kaggle(tmp_path, monkeypatch):
    """A `kaggle` on PATH that appends its argv to calls.log and prints canned submissions CSV."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    script = bin_dir / "kaggle"
    script.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nif [ "$2" = submissions ]; then cat <<"EOF"\n{CANNED}EOF\nfi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "not-a-real-key")
    return log


def write(folder, name, labels, cv=None, **meta):
    path = submit.write_submission(submit.make_submission(np.asarray(labels)), len(labels), folder, name,
                                   {"test_rows": len(labels), **meta})  # fmt: skip
    registry.append(folder / registry.INDEX_NAME, event="written", file=path.name, preset="fast", cv=cv)
    return path


def test_submit_sends_a_valid_file_with_cv_and_records_it(tmp_path, fake_kaggle, capsys):
    folder = tmp_path / "subs"
    write(folder, "first", [1, 2, 3], cv="0.99123")
    assert leaderboard.main(["--dir", str(folder), "submit", "first.csv", "-m", "try"]) == 0
    call = fake_kaggle.read_text().strip()
    assert call.startswith("competitions submit digit-recognizer -f ") and call.endswith("-m try | cv=0.99123")
    assert [r["event"] for r in registry.read(folder / "index.csv")] == ["written", "submitted"]

    assert leaderboard.main(["--dir", str(folder), "sync"]) == 0
    assert "competitions submissions digit-recognizer -v" in fake_kaggle.read_text()
    [entry] = registry.latest(folder / "index.csv")
    assert entry["public_score"] == "0.99171" and entry["cv"] == "0.99123"
    capsys.readouterr()
    leaderboard.main(["--dir", str(folder), "list"])
    listing = capsys.readouterr().out
    assert "first.csv" in listing and "0.99123" in listing and "0.99171" in listing
    leaderboard.main(["--dir", str(folder), "sync"])  # nothing new: no duplicate rows
    assert len(registry.read(folder / "index.csv")) == 3


def test_an_invalid_file_is_never_sent(tmp_path, fake_kaggle, capsys):
    folder = tmp_path / "subs"
    folder.mkdir()
    pd.DataFrame({"ImageId": [1, 2, 4], "Label": [1, 2, 3]}).to_csv(folder / "bad.csv", index=False)
    assert leaderboard.run_cli(leaderboard.main, ["--dir", str(folder), "submit", "bad.csv", "-m", "x"]) == 2
    assert "bad.csv: 3 rows, but the test set has 28000" in capsys.readouterr().err
    assert not fake_kaggle.exists() and not (folder / "index.csv").exists()


def test_no_cli_or_no_credentials_is_a_clear_error_and_records_nothing(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "subs"
    write(folder, "first", [1, 2, 3], cv="0.99")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert leaderboard.run_cli(leaderboard.main, ["--dir", str(folder), "submit", "first.csv", "-m", "x"]) == 2
    assert "the Kaggle CLI is not installed: pip install kaggle" in capsys.readouterr().err
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kaggle").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "kaggle").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
    assert leaderboard.run_cli(leaderboard.main, ["--dir", str(folder), "sync"]) == 2
    assert "no Kaggle credentials" in capsys.readouterr().err
    assert [r["event"] for r in registry.read(folder / "index.csv")] == ["written"]


def test_diff_counts_and_lists_differing_image_ids(tmp_path, capsys):
    folder = tmp_path / "subs"
    write(folder, "a", [1, 2, 3, 4])
    write(folder, "b", [1, 7, 3, 5])
    leaderboard.main(["--dir", str(folder), "diff", "a.csv", "b.csv"])
    out = capsys.readouterr().out
    assert "2 of 4 labels differ" in out and "ImageId 2: 2 -> 7" in out and "ImageId 4: 4 -> 5" in out


def test_blend_by_weighted_majority_vote(tmp_path):
    folder = tmp_path / "subs"
    write(folder, "a", [1, 2, 3])
    write(folder, "b", [1, 5, 6])
    write(folder, "c", [0, 5, 3])
    out = leaderboard.cmd_blend(folder, ["a.csv", "b.csv", "c.csv"], None, "")
    assert pd.read_csv(out)["Label"].tolist() == [1, 5, 3]
    weighted = leaderboard.cmd_blend(folder, ["a.csv", "b.csv", "c.csv"], [5, 1, 1], "a wins")
    assert pd.read_csv(weighted)["Label"].tolist() == [1, 2, 3]
    assert [r["preset"] for r in registry.latest(folder / "index.csv")].count("blend") == 2


def test_blend_averages_probabilities_when_the_runs_kept_them(tmp_path, demo_dir):
    from src import data

    labels = data.load(demo_dir).train_labels
    folder = tmp_path / "subs"
    paths = []
    for i, (test, right) in enumerate([([[0.6, 0.4], [0.1, 0.9]], 0.7), ([[0.3, 0.7], [0.2, 0.8]], 0.9)]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        test_probs = np.zeros((2, 10), np.float32)
        test_probs[:, :2] = test
        oof = np.full((len(labels), 10), (1 - right) / 9, np.float32)
        oof[np.arange(len(labels)), labels] = right
        np.save(run / "test_probs.npy", test_probs)
        np.save(run / "oof_probs.npy", oof)
        np.save(run / "train_rows.npy", np.arange(len(labels)))
        (run / "config.json").write_text(json.dumps({"data": {"folder": str(demo_dir)}}))
        paths.append(write(folder, f"p{i}", test_probs.argmax(1), run=str(run)))
    out = leaderboard.cmd_blend(folder, [p.name for p in paths], None, "")
    assert pd.read_csv(out)["Label"].tolist() == [1, 1]  # (0.6+0.3)/2 < (0.4+0.7)/2
    assert "_cv1.00000" in out.name
    assert json.loads(out.with_suffix(".json").read_text())["method"] == "averaged probabilities"
