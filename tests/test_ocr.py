"""OCR with the committed reader, on synthetic pages built from train.csv digits it never trained on.

Each kind of page a real user sends gets a test: a phone photo with a hand's shadow, a photo on a PDF
page with a white margin, a sheet on a table, columns of strings, slanted and curved strings, specks and
dashes, touching digits, turned pages. The real phone photos in ../shared/ocr-photos are the yardstick.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from ocr_pages import bowed, make_page, on_margin, on_table
from PIL import Image

from src import data, export, layout, ocr, page, reader, recognize
from src.errors import DigitsError, run_cli


@pytest.fixture(scope="module")
def unseen(real_dir):
    """Real digits that the committed reader did not train on (its held-out rows)."""
    images, labels, _, _ = data.load_train(real_dir)
    rows = reader.heldout_rows(labels, reader.ReaderConfig().heldout)
    return images[rows], labels[rows]


@pytest.fixture(scope="module")
def classify():
    return reader.Reader.load()


PAGES = {
    "clean": dict(),
    "phone photo: grey paper, soft shadow, noise, JPEG": dict(paper=(200, 195, 185), shadow=True, noise=5, jpeg=70),
    "a hand's hard shadow": dict(paper=(190, 188, 180), hard_shadow=True, noise=4, jpeg=75),
    "blue ink on yellow paper": dict(paper=(245, 230, 150), ink=(35, 45, 170), noise=5),
    "specks, dashes, smudges and a ruled line": dict(specks=60, dashes=12, ruled=True, noise=4),
    "slanted strings": dict(slope=0.12, lines=3),
    "curved strings": dict(curve=0.015, lines=3),
    "skewed scan": dict(skew_deg=2.5, noise=3),
    "a hand's shadow over a corner, digits in it": dict(paper=(190, 188, 180), corner_shadow=True, noise=4, jpeg=75),
}


def page_of(kind: str, unseen, seed: int, **extra):
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, 3000))
    return make_page(unseen[0][start:], unseen[1][start:], rng, **{**PAGES.get(kind, {}), **extra})


def read_texts(rgb, classify) -> tuple[int, list[str]]:
    result = recognize.read_page(rgb, classify)
    return result.rotation, [line.text for line in result.lines]


def errors(got: list[str], want: list[str]) -> int:
    """Digits wrong, missing or extra (edit distance). The reader gets about 98% of pen digits right, and some
    train.csv digits are unreadable once redrawn with a pen: a page of 10-30 digits may have one error."""
    return ocr.digit_errors(got, want)[0]


@pytest.mark.parametrize("kind", PAGES)
def test_reads_each_kind_of_page_line_by_line(kind, unseen, classify):
    rgb, texts = page_of(kind, unseen, seed=list(PAGES).index(kind))
    rotation, got = read_texts(rgb, classify)
    assert rotation == 0
    assert errors(got, texts) <= 1, (texts, got)
    assert len(got) == len(texts), (texts, got)  # a slanted or curved string stays one line
    assert [t.count(" ") for t in got] == [t.count(" ") for t in texts], (texts, got)  # groups found


def test_touching_digits_are_split(unseen, classify):
    rgb, texts = page_of("touching", unseen, seed=30, spacing=(-0.1, 0.02))
    _, got = read_texts(rgb, classify)
    assert errors(got, texts) <= 2, (texts, got)


def test_touching_digits_on_many_pages_are_cut_where_the_reader_is_surest(unseen, classify):
    """16 pages of strings whose digits touch or overlap: 92.6% of digits right with one even cut per wide box and
    a reader that took a touching pair for one digit; 94.9% once every cut at the least-ink columns was read
    and pairs were "not a digit" to the reader; 95.6% now that a narrow box the reader rejects is cut too."""
    wrong = total = 0
    for seed in range(60, 76):
        rgb, texts = page_of("touching", unseen, seed=seed, spacing=(-0.08, 0.05))
        e, n = ocr.digit_errors(read_texts(rgb, classify)[1], texts)
        wrong, total = wrong + e, total + n
    assert 1 - wrong / total >= 0.955, (wrong, total)


def test_a_box_as_wide_as_a_digit_is_never_cut_and_a_bridge_is_a_cut():
    mask = np.zeros((40, 60), np.uint8)
    mask[5:35, 5:25] = 1  # two blobs joined by a thin bridge
    mask[5:35, 32:55] = 1
    mask[18:21, 25:32] = 1
    cuts = layout.segmentations((5, 5, 50, 30), mask, typical_width=22.0)
    assert any(len(pieces) == 2 and 25 <= pieces[1][0] <= 32 for pieces in cuts)
    assert layout.segmentations((5, 5, 20, 30), mask, typical_width=22.0) == []


def test_a_narrow_box_is_cut_only_when_it_does_not_read_as_a_digit():
    """A 1 touching a 4 is hardly wider than one digit: such a box is cut when the reader rejects it whole."""
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:9] = 1  # a 1, touching a blob by a thin bridge
    mask[5:35, 14:30] = 1
    mask[18:21, 9:14] = 1
    box, rejected, a_digit = (5, 5, 25, 30), np.eye(11)[reader.NOT_A_DIGIT], np.eye(11)[4]
    assert layout.segmentations(box, mask, 28.0, recognize.split_width(a_digit)) == []
    cuts = layout.segmentations(box, mask, 28.0, recognize.split_width(rejected))
    assert any(len(pieces) == 2 and 9 <= pieces[1][0] <= 14 for pieces in cuts)


def test_thousands_of_broken_digits_are_joined_in_seconds():
    """A page broken into pieces (a grid the rules step missed, a texture) took minutes in join_broken alone."""
    halves = [(30 * k, y, 20, 18, 200) for k in range(1500) for y in (0, 22)]  # top and bottom of 1,500 digits
    start = time.time()
    boxes = layout.join_broken(halves, typical=40.0)
    assert time.time() - start < 5
    assert boxes == [(30 * k, 0, 20, 40) for k in range(1500)]


@pytest.mark.parametrize("columns", [2, 3])
def test_strings_side_by_side_are_separate_lines_in_reading_order(columns, unseen, classify):
    rgb, texts = page_of("columns", unseen, seed=40 + columns, columns=columns, lines=4)
    result = recognize.read_page(rgb, classify)
    got = [line.text for line in result.lines]
    assert len(got) == len(texts), (texts, got)  # never merged across a column
    assert errors(got, texts) <= 1, (texts, got)
    assert [line.block for line in result.lines] == list(range(columns)) * 4  # row by row, left to right


def test_a_photo_on_a_pdf_page_with_a_white_margin(unseen, classify, tmp_path):
    rgb, texts = page_of("phone photo: grey paper, soft shadow, noise, JPEG", unseen, seed=50)
    pdf = tmp_path / "scan.pdf"
    Image.fromarray(on_margin(rgb)).save(pdf, resolution=150)
    [scanned] = page.read_pages(pdf)
    _, got = read_texts(scanned, classify)
    assert errors(got, texts) <= 1, (texts, got)  # the paper's edge is no ink
    assert len(got) == len(texts), (texts, got)


def test_a_sheet_on_a_wooden_table(unseen, classify):
    rgb, texts = page_of("clean", unseen, seed=60)
    _, got = read_texts(on_table(rgb, np.random.default_rng(60)), classify)
    assert errors(got, texts) <= 1 and len(got) == len(texts), (texts, got)


def test_a_table_is_textured_all_over_and_a_shadowed_corner_with_digits_is_not():
    """The region a shadow cuts off a page can be as dense in ink as a table (a string of digits in a small
    corner), but only along the string: it stays paper; the table, grainy everywhere, does not."""
    rng = np.random.default_rng(0)
    region = np.zeros((300, 400), bool)
    region[80:220, :150] = True
    grain = rng.random((300, 400)) < 0.3
    string = np.zeros((300, 400), bool)
    for x in range(10, 140, 25):  # a row of digit-sized marks across the corner
        string[130:160, x : x + 18] = rng.random((30, 18)) < 0.6
    assert string[region].mean() > 0.06  # as dense as the old rule called a table
    assert page.textured(grain, region, cell=16)
    assert not page.textured(string, region, cell=16)
    assert page.textured(grain, np.pad(np.ones((300, 4), bool), ((0, 0), (0, 396))), cell=16)  # a sliver


@pytest.mark.parametrize("rules", ["notebook", "squared"])
def test_ruled_and_squared_paper_lose_their_rules_not_their_digits(rules, unseen, classify):
    """Rules every 28-40 px under 40-70 px digits, as dark as pencil: before they were taken out, every string
    touching a rule was one mark with it, and a squared page read as hundreds of 1s (in minutes)."""
    for seed in (80, 81):
        rgb, texts = page_of("clean", unseen, seed=seed, paper_rules=rules, paper=(235, 232, 225), noise=3, jpeg=80)
        _, got = read_texts(rgb, classify)
        assert errors(got, texts) <= 1 and len(got) == len(texts), (texts, got)


@pytest.mark.parametrize(
    ("rules", "skew", "seed"), [("notebook", 6.0, 208), ("squared", 6.0, 208), ("squared", 3.0, 320)]
)
def test_ruled_paper_photographed_askew_is_still_paper(rules, skew, seed, unseen, classify):
    """Turned, the sheet shows what it lies on in a corner: its rules made the whole sheet look as busy as a
    table, and the page read as nothing at all (seed 208). And a rule found on the small copy 2 px off its
    line measured as no rule, and stayed on the page as a row of 1s (seed 320)."""
    rgb, texts = page_of("clean", unseen, seed=seed, paper_rules=rules, paper=(235, 232, 225), noise=3, skew_deg=skew)
    _, got = read_texts(rgb, classify)
    assert errors(got, texts) <= 1 and len(got) == len(texts), (texts, got)


@pytest.mark.parametrize("axis, amplitude, seed", [("y", 70, 408), ("x", 40, 404)])
def test_squared_paper_photographed_bent_loses_its_curved_rules(axis, amplitude, seed, unseen, classify):
    """A page bowed like an open book's curves its rules: Hough's straight lines take out their middles, and what
    was left (the curved ends, whole rules) was read as hundreds of 1s, the page often turned sideways."""
    rgb, texts = page_of("clean", unseen, seed=seed, paper=(235, 232, 225), noise=3, jpeg=80, paper_rules="squared")
    rotation, got = read_texts(bowed(rgb, amplitude, axis), classify)
    lines = [text for text in got if text]  # a line of marks none of which reads as a digit is no text
    assert rotation == 0 and errors(got, texts) <= 1 and len(lines) == len(texts), (texts, got)


def test_a_rule_found_beside_its_line_is_moved_onto_it():
    mask = np.zeros((200, 600), bool)
    mask[101:104, :] = True  # a rule 3 px thick; the small copy put it 2 px higher
    _, _, height_at = page.run_map(mask)
    (x1, y1, x2, y2), thickness = page.on_its_rule(height_at, (0, 99, 599, 99))
    assert 101 <= y1 == y2 <= 103 and thickness == 3
    assert page.on_its_rule(height_at, (0, 60, 599, 60)) == ((0, 60, 599, 60), 0)  # nothing near: no rule


def test_a_page_photographed_askew_is_read_line_by_line_in_order(unseen, classify):
    """Turned 6 degrees, each line's second group stood higher than its first: two rows with such a gap made two
    columns, and the right column's lines came first. Lines are made level before they are ordered."""
    rgb, texts = page_of("clean", unseen, seed=302, paper=(235, 232, 225), noise=3, skew_deg=6.0)
    _, got = read_texts(rgb, classify)
    assert errors(got, texts) <= 1, (texts, got)


def test_the_skew_of_a_page_is_the_slope_of_its_lines():
    rows = [[(x, round(100 * r + 0.1 * x), 20, 30) for x in range(0, 300, 28)] for r in range(3)]
    boxes, flat = [b for row in rows for b in row], [(x, 100, 20, 30) for x in range(0, 300, 28)]
    assert layout.skew(boxes, layout.chains(boxes)) == pytest.approx(0.1, abs=0.01)
    assert layout.skew(flat, layout.chains(flat)) == 0.0
    lines = layout.layout(boxes, typical=30.0)
    assert [line.boxes for line in lines] == rows  # levelled to find the lines, returned as found


def test_a_rule_goes_but_a_stroke_that_crosses_it_and_a_tall_one_stay():
    ink = np.zeros((400, 600), np.float32)
    ink[200:203, :] = 0.6  # a ruled line across the page
    ink[:, 40:42] = 0.6  # a margin line
    ink[150:260, 300:306] = 0.9  # a 1 that crosses the line
    ink[20:380, 100:110] = 0.9  # a 1 as tall as the page: long and straight, but no rule (36 times its width)
    out = page.without_rules(ink)
    assert out[199:204, 120:290].max() == 0 and out[199:204, 320:].max() == 0  # the line is gone ...
    assert out[:190, 38:44].max() == 0  # ... and the margin line
    assert (out[150:260, 300:306] == 0.9).all()  # the crossing stroke is whole, where it crosses too
    assert (out[20:380, 100:110] == 0.9).all()
    blank = np.zeros((400, 600), np.float32)
    blank[100:140, 200:230] = 0.8
    assert (page.without_rules(blank) == blank).all()  # no rule, nothing taken


def test_a_thin_pen_stroke_along_a_rule_stays():
    """A 1 written on a squared page's vertical rule, with a pen as thin as the rule: its runs are as thin as the
    rule's, but it is darker (pen over a printed rule) and stays."""
    ink = np.zeros((400, 600), np.float32)
    ink[:, 300:302] = 0.4  # a faint vertical rule
    ink[:, 100:102] = 0.4  # and another, for the page's rules to be known
    ink[150:210, 300:302] = 0.9  # a thin 1 drawn along it
    out = page.without_rules(ink)
    assert out[:140, 295:308].max() == 0 and out[220:, 295:308].max() == 0  # the rule is gone ...
    assert (out[150:210, 300:302] == 0.9).all()  # ... the 1 on it stays


@pytest.mark.parametrize("turn", [1, 2, 3])
def test_finds_the_orientation_of_sideways_and_upside_down_pages(turn, unseen, classify):
    rgb, texts = page_of("clean", unseen, seed=70 + turn)
    turned = np.rot90(rgb, k=turn).copy()  # counter-clockwise by 90 * turn degrees
    result = recognize.read_page(turned, classify)
    assert result.rotation == 90 * turn  # the clockwise turn that sets it upright
    assert errors([line.text for line in result.lines], texts) <= 1
    # Boxes are on the page as given: each is the upright reading's box, turned with the page.
    upright = recognize.read_page(rgb, classify).lines
    for line_turned, line_upright in zip(result.lines, upright):
        for d_turned, d_upright in zip(line_turned.digits, line_upright.digits):
            want = rotated_box(d_upright.box, rgb.shape, turn)
            assert np.abs(np.subtract(d_turned.box, want)).max() <= 3, (d_turned.box, want)


def rotated_box(box, shape, turn: int):
    """The box (x, y, w, h) on a page of `shape` after np.rot90(page, k=turn)."""
    x, y, w, h = box
    height, width = shape[:2]
    for _ in range(turn):
        x, y, w, h = y, width - x - w, h, w
        height, width = width, height
    return x, y, w, h


def test_reader_in_numpy_matches_keras():
    import keras

    keras.utils.set_random_seed(3)
    model = reader.build_keras()
    digits = np.random.default_rng(3).integers(0, 256, (8, 28, 28)).astype(np.uint8)
    want = model.predict(digits[..., None], verbose=0)
    got = reader.Reader([reader.keras_weights(model)])(digits)
    np.testing.assert_allclose(got, want, atol=1e-5)
    other = reader.build_keras()  # a second member: the reader averages its members
    pair = reader.Reader([reader.keras_weights(model), reader.keras_weights(other)])
    np.testing.assert_allclose(pair(digits), (want + other.predict(digits[..., None], verbose=0)) / 2, atol=1e-5)


def test_committed_reader_tells_digits_from_marks(unseen, classify):
    rng = np.random.default_rng(5)
    images, labels = unseen[0][:600], unseen[1][:600]
    marks = np.stack([reader.augmented_mark(images, rng) for _ in range(300)])
    pen = np.stack([reader.augmented_digit(images, i, rng) for i in range(len(images))])
    assert np.mean(classify(images)[:, :10].argmax(1) == labels) >= 0.985  # clean held-out digits
    assert np.mean(classify(pen).argmax(1) == labels) >= 0.95  # drawn with a pen, photographed
    assert np.mean(classify(marks).argmax(1) == reader.NOT_A_DIGIT) >= 0.9  # specks, dashes, fragments
    pairs = np.stack([reader.normalize_digit(reader.touching_pair(images, rng)) for _ in range(200)])
    assert np.mean(classify(pairs).argmax(1) == reader.NOT_A_DIGIT) >= 0.9  # two touching digits are not one


def nine(open_top: bool, pen: int) -> np.ndarray:
    """bool [90, 60]: a 9 drawn with a pen `pen` px wide: a loop and a stem, the loop closed or open at the top."""
    ink = np.zeros((90, 60), np.uint8)
    arc = (200, 500) if open_top else (0, 360)  # degrees, clockwise from the right: open, it misses its top
    cv2.ellipse(ink, (30, 25), (20, 17), 0, *arc, 1, pen)
    cv2.line(ink, (50, 25), (48, 85), 1, pen)
    return ink.astype(bool)


@pytest.mark.parametrize(
    ("open_top", "pen", "p4", "read"),
    [
        (False, 5, 0.3, 9),  # a closed loop: a 9, however the reader doubts it
        (True, 5, 0.3, 4),  # an open loop, a thin pen: a 4 written open at the top
        (True, 5, 0.05, 9),  # the reader sure of its 9: left alone
        (True, 16, 0.3, 9),  # a marker fills a small loop: no hole says nothing
    ],
)
def test_a_nine_with_an_open_loop_written_with_a_thin_pen_is_a_four(open_top, pen, p4, read):
    """MNIST's 9s are often open at the top, so its reader takes an open-topped 4 for a 9 (phone_4's 4 did)."""
    mask = np.zeros((100, 200), np.uint8)
    mask[5:95, 70:130] = nine(open_top, pen)
    p = np.zeros(11, np.float32)
    p[9], p[4] = 1 - p4, p4
    checked = recognize.loop_checked(p, mask, (70, 5, 60, 90))
    assert checked.argmax() == read and sorted(checked) == sorted(p)  # the probabilities swapped, not changed


PHOTOS = os.environ.get("DIGITS_OCR_PHOTOS")


@pytest.mark.skipif(not PHOTOS, reason="DIGITS_OCR_PHOTOS is not set: no real photos for this test")
def test_real_phone_photos(classify, capsys):
    result = ocr.evaluate(Path(PHOTOS), classify)
    assert result["digits"] >= 40
    # 40/40 (39/40, phone_4's open-topped 4 read as 9, before loop_checked): see the README
    assert result["accuracy"] >= 0.975, result
    assert ocr.main(["--eval", PHOTOS]) == 0
    assert "all" in capsys.readouterr().out


@pytest.mark.skipif(not PHOTOS, reason="DIGITS_OCR_PHOTOS is not set: no real photos for this test")
def test_real_photos_turned_and_as_png_bmp_and_pdf_with_a_margin(classify, tmp_path):
    """Each real photo in the four orientations, as JPEG, PNG, BMP and a PDF page with a white margin."""
    truth = json.loads((Path(PHOTOS) / "truth.json").read_text())["lines"]
    lines = {}
    for name, want in truth.items():
        photo = Image.open(Path(PHOTOS) / name).convert("RGB")
        for turn in range(4):
            turned = photo.rotate(90 * turn, expand=True)
            stem = f"{Path(name).stem}_{90 * turn}"
            formats = {"png": {}, "bmp": {}} if turn == 0 else {"jpg": {"quality": 90}}
            for ext, options in formats.items():
                turned.save(tmp_path / f"{stem}.{ext}", **options)
                lines[f"{stem}.{ext}"] = want
            sheet = Image.new("RGB", (turned.width + 240, turned.height + 300), "white")
            sheet.paste(turned, (120, 150))
            sheet.save(tmp_path / f"{stem}.pdf", resolution=150)
            lines[f"{stem}.pdf"] = want
    (tmp_path / "truth.json").write_text(json.dumps({"lines": lines}))
    result = ocr.evaluate(tmp_path, classify)
    assert result["digits"] == 10 * len(lines)
    # 360/360; 350 when phone_4's open-topped 4 was read as 9 in every file (before loop_checked), 348 when the
    # paper at a step was estimated at full size alone (a dark corner of the photo against the white margin
    # brightened into a stray 1).
    assert result["accuracy"] >= 0.99, [r for r in result["files"] if r["accuracy"] < 1]


def with_glare(rgb: np.ndarray, centre: tuple[float, float], radius: float, strength: float) -> np.ndarray:
    """A glare spot: light mixed in, up to `strength` of the way to white at its centre (a glossy page, a lamp)."""
    ys, xs = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    g = strength * np.exp(-(((xs - centre[0]) / radius) ** 2 + ((ys - centre[1]) / (0.6 * radius)) ** 2))
    return (rgb + (255 - rgb.astype(np.float32)) * g[..., None]).clip(0, 255).astype(np.uint8)


@pytest.mark.skipif(not PHOTOS, reason="DIGITS_OCR_PHOTOS is not set: no real photos for this test")
def test_real_photos_with_a_glare_over_the_middle_of_the_string(classify):
    """Under a glare a stroke keeps a fifth of its contrast: read as it stands, the digits there fall below the
    page's ink threshold and drop out (34/40 with the code before glare_gain; measured 39/40: one of phone_2's)."""
    truth = json.loads((Path(PHOTOS) / "truth.json").read_text())["lines"]
    errors_all = digits_all = 0
    for name, want in truth.items():
        [rgb] = page.read_pages(Path(PHOTOS) / name)
        boxes = [d.box for line in recognize.read_page(rgb, classify).lines for d in line.digits]
        left, right = min(b[0] for b in boxes), max(b[0] + b[2] for b in boxes)
        middle = ((left + right) / 2, float(np.median([b[1] + b[3] / 2 for b in boxes])))
        _, got = read_texts(with_glare(rgb, middle, radius=90, strength=0.8), classify)
        errors, digits = ocr.digit_errors(got, want)
        errors_all, digits_all = errors_all + errors, digits_all + digits
    assert digits_all == 40 and errors_all <= 2, errors_all


def test_cli_pdf_in_json_annotated_and_searchable_pdf_out(unseen, tmp_path, capsys):
    pages, texts = zip(*(page_of("clean", unseen, seed=80 + i, lines=3) for i in range(2)))
    pdf = tmp_path / "two.pdf"
    Image.fromarray(on_margin(pages[0])).save(pdf, save_all=True, append_images=[Image.fromarray(pages[1])],
                                              resolution=150)  # fmt: skip
    out_pdf, seen = tmp_path / "digits.pdf", tmp_path / "seen.png"
    assert ocr.main([str(pdf), "--json", "--annotate", str(seen), "--pdf", str(out_pdf)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["file"] == str(pdf) and [p["page"] for p in result["pages"]] == [1, 2]
    for page_json, want in zip(result["pages"], texts):
        got = [line["text"] for line in page_json["lines"]]
        assert errors(got, list(want)) <= 1, (want, got)
        line = page_json["lines"][0]
        assert set(line) == {"text", "block", "digits"} and line["block"] == 0
        assert set(line["digits"][0]) == {"digit", "confidence", "box"} and 0 <= line["digits"][0]["confidence"] <= 1
    assert (tmp_path / "seen_2.png").is_file()
    drawn = np.asarray(Image.open(seen).convert("RGB")).astype(int)
    assert ((drawn[..., 1] > 150) & (drawn[..., 0] < 60) & (drawn[..., 2] < 60)).sum() > 500  # green boxes
    import pypdfium2 as pdfium

    searchable = pdfium.PdfDocument(str(out_pdf))
    assert len(searchable) == 2
    for number, page_json in enumerate(result["pages"]):
        extracted = searchable[number].get_textpage().get_text_range()
        assert "".join(extracted.split()) == "".join(line["text"] for line in page_json["lines"]).replace(" ", "")


def test_searchable_pdf_puts_each_digit_in_its_box(tmp_path):
    line = recognize.Line([recognize.Digit(4, 0.99, (100, 50, 40, 60)), recognize.Digit(2, 0.98, (300, 200, 40, 60))])
    rgb = np.full((400, 600, 3), 255, np.uint8)
    path = tmp_path / "p.pdf"
    path.write_bytes(export.searchable_pdf([export.pdf_page(rgb, [line])]))
    import pypdfium2 as pdfium

    text = pdfium.PdfDocument(str(path))[0].get_textpage()
    pt = 72 / export.PDF_DPI
    height = 400 * pt
    for x, y, w, h in [(100, 50, 40, 60), (300, 200, 40, 60)]:
        left, bottom, right, top = text.get_charbox(
            text.get_index(x * pt + w * pt / 2, height - (y + h / 2) * pt, 5, 5)
        )
        assert abs(left - x * pt) < 2 and abs(right - (x + w) * pt) < 2  # the digit's glyph covers its box
        assert abs(top - (height - y * pt)) < 2 and abs(bottom - (height - (y + h) * pt)) < 2


def test_read_with_a_runs_fold_models(demo_run, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (400, 300), (240, 240, 230)).save(blank)
    assert ocr.main([str(blank), "--model", str(demo_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pages"][0]["lines"] == []
    classify = recognize.load_classifier(demo_run)
    probs = recognize.with_reject_column(classify(np.zeros((3, 28, 28), np.uint8)))
    assert probs.shape == (3, 11) and np.allclose(probs[:, :10].sum(1), 1, atol=1e-4)


def test_mnist_normalisation_matches_the_training_digits():
    stroke = np.zeros((200, 120), np.float32)
    stroke[20:180, 50:70] = 1.0  # a thick "1", 160 pixels tall
    digit = reader.normalize_digit(stroke)
    rows = np.flatnonzero(digit.max(1) > 0)
    assert rows[-1] - rows[0] + 1 in (20, 21, 22)  # fits the 20-pixel box (plus anti-aliasing)
    ys, xs = np.indices(digit.shape)
    mass = digit.astype(float) / digit.sum()
    assert abs((ys * mass).sum() - 14) < 1 and abs((xs * mass).sum() - 14) < 1
    assert 1 <= (digit[14] > 127).sum() <= 5  # MNIST-like stroke width, not a 20-pixel slab


def encrypted_pdf() -> bytes:
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] >>",
               b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (b"11" * 32, b"22" * 32)]  # fmt: skip
    return export.pdf_file(objects).replace(b"/Root 1 0 R >>", b"/Root 1 0 R /Encrypt 4 0 R /ID [<00> <00>] >>")


BAD_FILES = {
    "empty.jpg": (b"", "empty.jpg: empty file"),
    "notes.txt": (b"not an image", "notes.txt: not an image"),
    "broken.pdf": (b"%PDF-1.4\n garbage", "broken.pdf: not a readable PDF"),
    "locked.pdf": (encrypted_pdf(), "locked.pdf: not a readable PDF (it is encrypted"),
    "cut.png": (None, "cut.png: cannot be read as an image"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_files_are_one_line_errors(name, tmp_path, capsys):
    content, message = BAD_FILES[name]
    path = tmp_path / name
    if content is None:  # a PNG cut short in the middle of its pixels
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)).save(path)
        content = path.read_bytes()[:2000]
    path.write_bytes(content)
    out = tmp_path / "out.pdf"
    assert run_cli(ocr.main, [str(path), "--pdf", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # nothing half-written


def test_odd_but_valid_pages_give_a_result(tmp_path, capsys):
    tiny, blank = tmp_path / "dot.png", tmp_path / "blank.bmp"
    Image.new("RGB", (1, 1), (0, 0, 0)).save(tiny)
    Image.new("RGB", (800, 600), (240, 240, 230)).save(blank)
    assert ocr.main([str(tiny), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pages"] == [{"page": 1, "rotation": 0, "lines": []}]
    assert ocr.main([str(blank)]) == 0 and capsys.readouterr().out == ""
    huge = tmp_path / "huge.png"
    Image.new("L", (10_000, 9_000), 255).save(huge)
    with pytest.raises(DigitsError, match="huge.png: 10000x9000 is too large"):
        page.read_pages(huge)
    assert run_cli(ocr.main, [str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg: no such file" in capsys.readouterr().err


def test_a_long_pdf_shows_progress_per_page(tmp_path, capsys):
    blank = np.full((120, 90, 3), 250, np.uint8)
    path = tmp_path / "long.pdf"
    path.write_bytes(export.searchable_pdf([export.pdf_page(blank, [])] * 200))
    assert ocr.main([str(path), "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["pages"]) == 200
    assert "page 200/200" in captured.err


def test_large_photos_exif_orientation_and_multipage_tiff(unseen, classify, tmp_path):
    rgb, texts = page_of("clean", unseen, seed=90, lines=3)
    big = cv2.resize(rgb, None, fx=3.2, fy=3.2, interpolation=cv2.INTER_CUBIC)  # 2880 x 3840: a 12 MP photo
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; a viewer turns it 90 degrees clockwise to show it
    Image.fromarray(np.rot90(big, k=1).copy()).save(path, quality=90, exif=exif)
    [shown] = page.read_pages(path)
    assert shown.shape[1] > shown.shape[0]  # turned back to landscape, as a viewer shows it
    rotation, got = read_texts(shown, classify)
    assert rotation == 0 and errors(got, texts) <= 1, (texts, got)
    tiff = tmp_path / "two.tif"
    Image.fromarray(rgb).save(tiff, save_all=True, append_images=[Image.fromarray(rgb[::-1, ::-1].copy())])
    pages = page.read_pages(tiff)
    assert len(pages) == 2 and recognize.read_page(pages[1], classify).rotation == 180


def test_eval_scores_by_edit_distance_per_page(tmp_path, unseen):
    rgb, texts = page_of("clean", unseen, seed=95, lines=2)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (tmp_path / "truth.json").write_text(json.dumps({"lines": {"a.png": texts}}))
    result = ocr.evaluate(tmp_path, reader.Reader.load())
    assert result["digits"] == len("".join(texts).replace(" ", "")) and result["errors"] <= 1
    (tmp_path / "truth.json").write_text("{}")
    with pytest.raises(DigitsError, match="truth.json"):
        ocr.evaluate(tmp_path, reader.Reader.load())


def test_line_accuracy_is_edit_distance_ignoring_whitespace():
    assert ocr.line_accuracy(["12 34", "56"], ["12 34", "56"]) == 1.0
    assert ocr.line_accuracy(["1284"], ["1234"]) == 0.75
    assert ocr.line_accuracy(["12"], ["12", "34"]) == 0.5
    assert ocr.line_accuracy(["1 2", "3"], ["123"]) == 1.0
