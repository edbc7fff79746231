"""OCR of synthetic pages built from real train.csv digits the reader never trained on, with known text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ocr_pages import make_page
from PIL import Image

from src import data, ocr
from src.errors import DigitsError


@pytest.fixture(scope="module")
def unseen(real_dir, real_model_run):
    """Real digits that the reader's models did not train on."""
    images, labels, _, _ = data.load_train(real_dir)
    used = np.zeros(len(labels), bool)
    used[np.load(real_model_run / "train_rows.npy")] = True
    return images[~used], labels[~used]


@pytest.fixture(scope="module")
def reader(real_model_run):
    return ocr.Ensemble(real_model_run)


PAGES = {
    "clean": {},
    "phone photo: shadow, yellow paper, blue ink, noise": dict(
        paper=(245, 230, 150), ink=(35, 45, 170), shadow=True, noise=6
    ),
    "skewed scan with specks and a ruled line": dict(skew_deg=2.5, specks=40, ruled=True, noise=4),
    "tight spacing, some digits touching": dict(spacing=(-0.06, 0.08)),
}


@pytest.mark.parametrize("name", PAGES)
def test_reads_synthetic_pages(name, unseen, reader):
    rng = np.random.default_rng(list(PAGES).index(name))
    start = int(rng.integers(0, 2000))
    page, texts = make_page(unseen[0][start:], unseen[1][start:], rng, lines=5, **PAGES[name])
    rotation, lines = ocr.read_page(page, reader)
    got = [line.text for line in lines]
    assert rotation == 0
    accuracy = ocr.line_accuracy(got, texts)
    assert accuracy >= (0.85 if "touching" in name else 0.9), (texts, got)  # the test reader is ~97% per digit
    assert len(got) == len(texts)
    if "touching" not in name:
        assert [t.count(" ") for t in got] == [t.count(" ") for t in texts]  # groups found


@pytest.mark.parametrize("turn", [1, 2, 3])
def test_finds_the_orientation_of_sideways_and_upside_down_pages(turn, unseen, reader):
    rng = np.random.default_rng(10 + turn)
    page, texts = make_page(unseen[0][3000:], unseen[1][3000:], rng, lines=4)
    turned = np.rot90(page, k=turn).copy()  # counter-clockwise by 90 * turn degrees
    rotation, lines = ocr.read_page(turned, reader)
    assert rotation == 90 * turn  # the clockwise turn that sets it upright
    assert ocr.line_accuracy([line.text for line in lines], texts) >= 0.9
    # Boxes are reported on the page as given: inside its bounds.
    h, w = np.rot90(page, k=turn).shape[:2]
    assert all(0 <= d.box[0] and d.box[0] + d.box[2] <= w + 1 and d.box[1] + d.box[3] <= h + 1
               for line in lines for d in line.digits)  # fmt: skip


def test_cli_reads_a_two_page_pdf_and_a_jpeg_with_json_and_annotation(unseen, real_model_run, tmp_path, capsys):
    rng = np.random.default_rng(20)
    pages, texts = zip(*(make_page(unseen[0][4000 + 60 * i :], unseen[1][4000 + 60 * i :], rng, lines=3)
                         for i in range(2)))  # fmt: skip
    pdf = tmp_path / "two.pdf"
    Image.fromarray(pages[0]).save(pdf, save_all=True, append_images=[Image.fromarray(pages[1])], resolution=150)
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(pages[0]).save(jpeg, quality=85)
    argv = [str(pdf), "--model", str(real_model_run), "--json", "--annotate", str(tmp_path / "seen.png")]
    assert ocr.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["file"] == str(pdf) and [p["page"] for p in result["pages"]] == [1, 2]
    for page, want in zip(result["pages"], texts):
        assert ocr.line_accuracy([line["text"] for line in page["lines"]], list(want)) >= 0.9
        digit = page["lines"][0]["digits"][0]
        assert set(digit) == {"digit", "confidence", "box"} and 0 <= digit["confidence"] <= 1
    assert (tmp_path / "seen.png").stat().st_size > 10_000 and (tmp_path / "seen_2.png").is_file()
    assert ocr.main([str(jpeg), "--model", str(real_model_run)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert ocr.line_accuracy(printed, list(texts[0])) >= 0.9


def test_mnist_normalisation_matches_the_training_digits():
    stroke = np.zeros((200, 120), np.float32)
    stroke[20:180, 50:70] = 1.0  # a thick "1", 160 pixels tall
    digit = ocr.normalize_digit(stroke)
    rows = np.flatnonzero(digit.max(1) > 0)
    assert rows[-1] - rows[0] + 1 in (20, 21, 22)  # fits the 20-pixel box (plus anti-aliasing)
    ys, xs = np.indices(digit.shape)
    mass = digit.astype(float) / digit.sum()
    assert abs((ys * mass).sum() - 14) < 1 and abs((xs * mass).sum() - 14) < 1
    assert 1 <= (digit[14] > 127).sum() <= 5  # MNIST-like stroke width, not a 20-pixel slab


def test_bad_input_is_a_clear_error_or_empty(tmp_path, real_model_run, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(DigitsError, match="notes.txt: not an image"):
        ocr.read_pages(text)
    corrupt = tmp_path / "broken.pdf"
    corrupt.write_bytes(b"%PDF-1.4\n garbage")
    with pytest.raises(DigitsError, match="broken.pdf: not a readable PDF"):
        ocr.read_pages(corrupt)
    huge = tmp_path / "huge.png"
    Image.new("L", (10_000, 9_000), 255).save(huge)
    with pytest.raises(DigitsError, match="huge.png: 10000x9000 is too large"):
        ocr.read_pages(huge)
    blank = tmp_path / "blank.png"
    Image.new("RGB", (800, 600), (240, 240, 230)).save(blank)
    assert ocr.main([str(blank), "--model", str(real_model_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pages"] == [{"page": 1, "rotation": 0, "lines": []}]
    assert ocr.run_cli(ocr.main, [str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg: no such file" in capsys.readouterr().err


def test_no_model_says_how_to_train_one(tmp_path):
    with pytest.raises(DigitsError, match="python -m src.submit --preset fast"):
        ocr.find_model(tmp_path)


def test_line_accuracy_is_edit_distance_per_line():
    assert ocr.line_accuracy(["12 34", "56"], ["12 34", "56"]) == 1.0
    assert ocr.line_accuracy(["1284"], ["1234"]) == 0.75
    assert ocr.line_accuracy(["12"], ["12", "34"]) == 0.5
