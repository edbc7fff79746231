"""The OCR's synthetic-page benchmark: digit accuracy per kind of page, with the committed reader.

    python tests/ocr_benchmark.py [--data-dir ../shared/data/digit-recognizer] [--pages-per-kind 6] [--model R]

Pages are built by ocr_pages.make_page from the train.csv rows the reader never trained on (the same
kinds as tests/test_ocr.py, plus columns, touching strings, a PDF margin and a table), read by
src.recognize.read_page and scored by edit distance per page, as `python -m src.ocr --eval` scores.
The real phone photos stay the yardstick; this measures many more pages of the kinds they stand for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script from anywhere: the kit and the page builder

from ocr_pages import bowed, make_page, on_margin, on_table  # noqa: E402
from test_ocr import PAGES  # noqa: E402

from src import data, ocr, reader, recognize  # noqa: E402
from src.errors import DigitsError, run_cli  # noqa: E402

KINDS = {
    **PAGES,
    "2 columns": dict(columns=2),
    "3 columns": dict(columns=3, size=(900, 1500)),
    "touching": dict(spacing=(-0.08, 0.05), noise=3, jpeg=80),
    "photo on a PDF page with a white margin": dict(),
    "a sheet on a wooden table": dict(),
    "notebook paper (ruled lines, a margin line)": dict(
        paper_rules="notebook", paper=(235, 232, 225), noise=3, jpeg=80
    ),
    "squared paper": dict(paper_rules="squared", paper=(235, 232, 225), noise=3, jpeg=80),
    "ruled paper photographed askew (6 degrees)": dict(
        paper_rules="notebook", paper=(235, 232, 225), noise=3, jpeg=80, skew_deg=6.0
    ),
    "squared paper photographed bent (bowed 50 px)": dict(
        paper_rules="squared", paper=(235, 232, 225), noise=3, jpeg=80
    ),
}


def page(kind: str, seed: int, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(RGB page, its lines' text) of one kind, from `seed`."""
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, 3000))
    rgb, texts = make_page(images[start:], labels[start:], rng, **KINDS[kind])
    if kind.startswith("photo on a PDF page"):
        rgb = on_margin(rgb)
    elif kind.startswith("a sheet on"):
        rgb = on_table(rgb, rng)
    elif kind.startswith("squared paper photographed bent"):
        rgb = bowed(rgb, 50)
    return rgb, texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/ocr_benchmark.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="the competition data (default: the kit's own search)")
    parser.add_argument("--pages-per-kind", type=int, default=6)
    parser.add_argument("--model", type=Path, help="other reader weights (.npz) or a run's folder, as for src.ocr")
    args = parser.parse_args(argv)
    folder = data.find_data_dir(args.data_dir)
    if folder is None:
        raise DigitsError("no competition data: pass --data-dir or set DIGITS_DATA_DIR")
    images, labels, _, _ = data.load_train(Path(folder))
    rows = reader.heldout_rows(labels, reader.ReaderConfig().heldout)
    classify, start = recognize.load_classifier(args.model), time.time()
    print(f"{'kind':50} {'pages':>5} {'digits':>6} {'accuracy':>8}")
    wrong_all = total_all = 0
    for k, kind in enumerate(KINDS):
        wrong = total = 0
        for r in range(args.pages_per_kind):
            rgb, texts = page(kind, 100 * r + k, images[rows], labels[rows])
            got = [line.text for line in recognize.read_page(rgb, classify).lines]
            e, n = ocr.digit_errors(got, texts)
            wrong, total = wrong + e, total + n
        print(f"{kind:50} {args.pages_per_kind:>5} {total:>6} {1 - wrong / total:>8.2%}", flush=True)
        wrong_all, total_all = wrong_all + wrong, total_all + total
    pages = args.pages_per_kind * len(KINDS)
    print(f"{'all':50} {pages:>5} {total_all:>6} {1 - wrong_all / total_all:>8.2%}  ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
