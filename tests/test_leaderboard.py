"""Leaderboard commands against a fake `kaggle` executable that records its arguments (no network)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pandas as pd
import pytest

from src import leaderboard, publish, registry

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
    return publish.publish(np.asarray(labels), folder, name, {"test_rows": len(labels), **meta}, preset="fast", cv=cv)


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


def fake_run(folder, demo_dir, name, test_probs, oof):
    run = folder / name
    run.mkdir(parents=True)
    np.save(run / "test_probs.npy", np.asarray(test_probs, np.float32))
    np.save(run / "oof_probs.npy", oof)
    np.save(run / "train_rows.npy", np.arange(len(oof)))
    (run / "config.json").write_text(json.dumps({"data": {"folder": str(demo_dir)}}))
    return run


def test_blend_averages_probabilities_and_scores_the_blend_by_cv(tmp_path, demo_dir):
    """Run 0 is sure and right on the first quarter of the rows, sure and wrong elsewhere; run 1 is less sure and
    the other way round. Equal weights follow run 0 (CV 0.25); weights 1:3 follow run 1 (CV 0.75)."""
    from src import data

    labels = data.load(demo_dir).train_labels
    quarter = np.arange(len(labels)) < len(labels) // 4
    wrong = (labels + 1) % 10
    oofs = []
    for sure, right_rows in ((0.9, quarter), (0.6, ~quarter)):
        oof = np.full((len(labels), 10), (1 - sure) / 9, np.float32)
        pick = np.where(right_rows, labels, wrong)
        oof[np.arange(len(labels)), pick] = sure
        oofs.append(oof)
    tests = [[[0.6, 0.4] + [0] * 8, [0.1, 0.9] + [0] * 8], [[0.3, 0.7] + [0] * 8, [0.2, 0.8] + [0] * 8]]
    folder = tmp_path / "subs"
    paths = [write(folder, f"p{i}", np.argmax(t, 1), run=str(fake_run(tmp_path, demo_dir, f"run{i}", t, o)))
             for i, (t, o) in enumerate(zip(tests, oofs))]  # fmt: skip
    out = leaderboard.cmd_blend(folder, [p.name for p in paths], None, "")
    assert pd.read_csv(out)["Label"].tolist() == [1, 1]  # (0.6+0.3)/2 < (0.4+0.7)/2
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["method"] == "averaged probabilities"
    assert meta["cv_accuracy"] == pytest.approx(quarter.mean())
    weighted = leaderboard.cmd_blend(folder, [p.name for p in paths], [1, 3], "")
    assert json.loads(weighted.with_suffix(".json").read_text())["cv_accuracy"] == pytest.approx(1 - quarter.mean())
    assert pd.read_csv(weighted)["Label"].tolist() == [1, 1]


def test_diff_of_files_of_different_lengths_is_an_error(tmp_path, capsys):
    folder = tmp_path / "subs"
    write(folder, "a", [1, 2, 3, 4])
    write(folder, "b", [1, 2, 3])
    assert leaderboard.run_cli(leaderboard.main, ["--dir", str(folder), "diff", "a.csv", "b.csv"]) == 2
    assert "a.csv has 4 rows, b.csv has 3" in capsys.readouterr().err


def test_kaggle_failing_is_one_line_and_records_nothing(tmp_path, fake_kaggle, capsys):
    folder = tmp_path / "subs"
    write(folder, "first", [1, 2, 3], cv="0.99")
    script = fake_kaggle.parent / "bin" / "kaggle"
    script.write_text('#!/bin/sh\necho "403 - Forbidden: accept the competition rules first" >&2\nexit 1\n')
    assert leaderboard.run_cli(leaderboard.main, ["--dir", str(folder), "submit", "first.csv", "-m", "x"]) == 2
    assert "kaggle competitions submit failed: 403 - Forbidden" in capsys.readouterr().err
    assert [r["event"] for r in registry.read(folder / "index.csv")] == ["written"]


def test_sync_finds_columns_by_name_and_fails_loudly_without_them(tmp_path, fake_kaggle, capsys):
    folder = tmp_path / "subs"
    write(folder, "first", [1, 2, 3], cv="0.99")
    script = fake_kaggle.parent / "bin" / "kaggle"
    renamed = "date,File Name,Private Score,Public Score\n2026-11-20,first.csv,0.9901,0.9917\n"
    script.write_text(f'#!/bin/sh\ncat <<"EOF"\n{renamed}EOF\n')
    assert leaderboard.main(["--dir", str(folder), "sync"]) == 0
    [entry] = registry.latest(folder / "index.csv")
    assert entry["public_score"] == "0.9917" and entry["private_score"] == "0.9901"
    script.write_text('#!/bin/sh\nprintf "fileName,date,status\\nfirst.csv,2026-11-20,complete\\n"\n')
    assert leaderboard.run_cli(leaderboard.main, ["--dir", str(folder), "sync"]) == 2
    assert "no publicScore column" in capsys.readouterr().err
