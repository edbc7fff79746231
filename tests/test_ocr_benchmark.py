"""The synthetic-page benchmark (tests/ocr_benchmark.py) runs and scores what it reads: one page of each kind."""

from __future__ import annotations

import re

import numpy as np
import ocr_benchmark

from src import reader


def test_one_page_of_each_kind_is_read_and_scored(real_dir, capsys):
    assert ocr_benchmark.main(["--data-dir", str(real_dir), "--pages-per-kind", "1"]) == 0
    out = capsys.readouterr().out
    assert all(kind in out for kind in ocr_benchmark.KINDS)
    pages = len(ocr_benchmark.KINDS)
    digits, accuracy = re.search(rf"^all\s+{pages}\s+(\d+)\s+([\d.]+)%", out, re.M).groups()
    assert int(digits) > 200 and float(accuracy) >= 90  # the reader gets about 98% of these pages' digits


def test_model_flag_reads_with_other_weights(real_dir, tmp_path, capsys):
    """--model swaps the reader: weights whose last layer says "not a digit" for everything read nothing."""
    committed = reader.Reader.load()
    blind = [[*weights[:-2], np.zeros_like(weights[-2]), np.eye(1, reader.CLASSES, reader.NOT_A_DIGIT)[0]]
             for weights in committed.members]  # fmt: skip
    reader.Reader(blind, committed.info, committed.layers).save(tmp_path / "blind.npz")
    args = ["--data-dir", str(real_dir), "--pages-per-kind", "1", "--model", str(tmp_path / "blind.npz")]
    assert ocr_benchmark.main(args) == 0
    assert re.search(rf"^all\s+{len(ocr_benchmark.KINDS)}\s+\d+\s+0\.00%", capsys.readouterr().out, re.M)
