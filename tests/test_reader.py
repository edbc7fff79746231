"""Training the OCR reader: its epochs (the same however many processes draw them) and `python -m src.ocr train`."""

from __future__ import annotations

import numpy as np

from src import data, ocr, reader
from src.config import ReaderConfig


def test_an_epoch_is_the_same_drawn_here_or_by_two_processes(demo_dir):
    images, labels, _, _ = data.load_train(demo_dir)
    images, labels = images[:300], labels[:300]
    config = ReaderConfig(copies=1, elastic_p=0.5)
    lines = reader.trace_lines(images, 2)
    x, y = reader.make_epoch(images, labels, config, seed=5, lines=lines)
    with reader.drawing_pool(images, labels, lines, 2) as pool:
        x2, y2 = reader.make_epoch(images, labels, config, seed=5, lines=lines, draw_map=pool.map)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert len(y) == 300 + int(300 * 0.15 / 0.85) and (y == reader.NOT_A_DIGIT).sum() == len(y) - 300
    other, _ = reader.make_epoch(images, labels, config, seed=6, lines=lines)
    assert not np.array_equal(x, other)  # every epoch draws new pens


def test_elastic_bends_a_digit_but_keeps_its_ink(demo_dir):
    images, _, _, _ = data.load_train(demo_dir)
    straight = reader.pen_glyph(images[0], np.random.default_rng(1), width_ratio=0.1)
    bent = reader.pen_glyph(images[0], np.random.default_rng(1), width_ratio=0.1, bend=1.0)
    assert straight.shape != bent.shape or not np.array_equal(straight, bent)
    assert 0.7 < bent.sum() / straight.sum() < 1.4  # moved, not torn or smeared away


def test_ocr_train_writes_a_reader_that_reads(demo_dir, tmp_path, capsys):
    out = tmp_path / "reader.npz"
    argv = ["train", "--data-dir", str(demo_dir), "--max-rows", "400", "--epochs", "1", "--members", "1",
            "--workers", "1", "--out", str(out)]  # fmt: skip
    assert ocr.main(argv) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "ETA" in printed and "held-out rows" in printed
    trained = reader.Reader.load(out)
    assert trained.info["members"] == 1 and trained.info["rows"] == 400
    assert 0 <= trained.info["heldout"]["clean_accuracy"] <= 1
    images, _, _, _ = data.load_train(demo_dir)
    probs = trained(images[:20])
    assert probs.shape == (20, reader.CLASSES) and np.allclose(probs.sum(1), 1, atol=1e-4)
