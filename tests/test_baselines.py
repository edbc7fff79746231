"""Baselines on a tiny slice: same folds as the CNN, a table with every model and the kit's run beside them."""

from __future__ import annotations

import pandas as pd

from src import baselines, registry


def test_baselines_table_on_a_tiny_slice(demo_dir, demo_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "smoke", "--data-dir", str(demo_dir), "--max-rows", "600", "--epochs", "2",
            "--runs-dir", str(demo_run.parent), "--out", str(tmp_path / "out"), "--submit"]  # fmt: skip
    assert baselines.main(argv) == 0
    table = pd.read_csv(tmp_path / "out" / "baselines.csv")
    assert list(table.model[:3]) == ["svm", "mlp", "simple_cnn"]
    assert table.model[3].startswith("kit ensemble")
    assert table.cv_accuracy.between(0, 1).all()
    assert table.cv_accuracy[0] > 0.9  # an RBF SVM separates scikit-learn's digits easily
    assert (table.train_minutes[:3] > 0).all() and (table.predict_images_per_s[:3] > 0).all()
    assert "| model | cv_accuracy |" in (tmp_path / "out" / "baselines.md").read_text()
    written = sorted(p.name for p in (tmp_path / "submissions").glob("*_baseline-*.csv"))
    assert [n.split("_baseline-")[1].split("_cv")[0] for n in written] == ["mlp", "simple_cnn", "svm"]
    registered = registry.latest(tmp_path / "submissions" / registry.INDEX_NAME)
    assert sorted(r["file"] for r in registered) == written  # every submission is registered
    assert {r["preset"] for r in registered} == {"baseline-svm", "baseline-mlp", "baseline-simple_cnn"}
