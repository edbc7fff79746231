"""The synthetic-page benchmark (tests/ocr_benchmark.py) runs and scores what it reads: one page of each kind."""

from __future__ import annotations

import re

import ocr_benchmark


def test_one_page_of_each_kind_is_read_and_scored(real_dir, capsys):
    assert ocr_benchmark.main(["--data-dir", str(real_dir), "--pages-per-kind", "1"]) == 0
    out = capsys.readouterr().out
    assert all(kind in out for kind in ocr_benchmark.KINDS)
    digits, accuracy = re.search(r"^all\s+13\s+(\d+)\s+([\d.]+)%", out, re.M).groups()
    assert int(digits) > 200 and float(accuracy) >= 90  # the reader gets about 98% of these pages' digits
