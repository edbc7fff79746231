"""Read handwritten digits from photos, scans and PDFs: text, JSON, an annotated PNG, a searchable PDF.

    python -m src.ocr FILE [FILE ...] [--json] [--annotate OUT.png] [--pdf OUT.pdf] [--model RUN]
    python -m src.ocr --eval DIR          # DIR/truth.json: digit accuracy per file and overall
    python -m src.ocr train [--epochs E]  # rebuild the committed reader (src/reader.npz) from train.csv

Works on a fresh clone: the reader's weights are committed. `--model RUN` reads with a run's fold
ensemble instead (it has no "not a digit" class; marks below the confidence floor are still dropped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from src import export, page, reader
from src.config import ReaderConfig, with_overrides
from src.errors import DigitsError, run_cli
from src.files import write_atomically
from src.recognize import Classify, load_classifier, read_file

# --- --eval ---------------------------------------------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def digit_errors(predicted: list[str], expected: list[str]) -> tuple[int, int]:
    """(edit distance, digits expected) between a page's lines and the truth, whitespace ignored."""
    got, want = "".join("".join(predicted).split()), "".join("".join(expected).split())
    return edit_distance(got, want), len(want)


def line_accuracy(predicted: list[str], expected: list[str]) -> float:
    errors, total = digit_errors(predicted, expected)
    return 1 - errors / max(1, total)


def load_truth(folder: Path) -> dict[str, list[str]]:
    path = folder / "truth.json"
    try:
        truth = json.loads(path.read_text())["lines"]
    except FileNotFoundError:
        raise DigitsError(f"{path}: no such file (--eval needs DIR/truth.json)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DigitsError(f'{path}: expected {{"lines": {{file: [line, ...]}}}} ({error})') from None
    if not isinstance(truth, dict) or not all(isinstance(v, list) for v in truth.values()):
        raise DigitsError(f'{path}: "lines" must map each file name to a list of lines')
    return truth


def evaluate(folder: Path, classify: Classify) -> dict:
    """Digit accuracy (1 - edit distance / digits, whitespace ignored) per file and overall, with seconds per file."""
    rows, errors, total = [], 0, 0
    for name, expected in load_truth(folder).items():
        start = time.time()
        got = [line.text for *_, result in read_file(folder / name, classify) for line in result.lines]
        e, n = digit_errors(got, expected)
        errors, total = errors + e, total + n
        rows.append({"file": name, "expected": " / ".join(expected), "read": " / ".join(got),
                     "accuracy": round(1 - e / max(n, 1), 4), "seconds": round(time.time() - start, 2)})  # fmt: skip
    return {"files": rows, "digits": total, "errors": errors, "accuracy": round(1 - errors / max(total, 1), 4)}


def print_eval(result: dict) -> None:
    width = max([len(r["file"]) for r in result["files"]] + [4])
    print(f"{'file':<{width}}  accuracy  seconds  read (expected)")
    for r in result["files"]:
        print(f"{r['file']:<{width}}  {r['accuracy']:>8.1%}  {r['seconds']:>7.2f}  {r['read']} ({r['expected']})")
    print(
        f"{'all':<{width}}  {result['accuracy']:>8.1%}  {result['digits'] - result['errors']}/{result['digits']} digits"
    )


# --- the commands ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m src.ocr", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--model", type=Path, help="a run folder (read with its fold models) or reader weights (.npz)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--annotate", type=Path, metavar="OUT.png", help="save the pages with boxes and digits drawn")
    parser.add_argument(
        "--pdf", type=Path, metavar="OUT.pdf", help="save a searchable PDF (page image + invisible text)"
    )
    parser.add_argument("--eval", type=Path, metavar="DIR", help="score the files named in DIR/truth.json")
    args = parser.parse_args(argv)
    if not args.files and not args.eval:
        parser.error("give files to read, or --eval DIR")
    return args


def annotate_path(base: Path, shot: int) -> Path:
    return base if shot == 0 else base.with_name(f"{base.stem}_{shot + 1}{base.suffix or '.png'}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return train_main(argv[1:])
    args = parse_args(argv)
    for path in args.files:
        page.check_file(path)
    classify = load_classifier(args.model)
    if args.eval:
        print_eval(evaluate(args.eval, classify))
        return 0
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    results, pdf_pages, pngs = [], [], []
    for path in args.files:
        pages = []
        for number, total, rgb, result in read_file(path, classify, log):
            pages.append(export.page_json(number, result))
            pdf_pages += [export.pdf_page(rgb, result.lines)] if args.pdf else []
            pngs += [export.annotated_png(rgb, result.lines)] if args.annotate else []
            if not args.json and (len(args.files) > 1 or total > 1):
                print(f"# {path} page {number} (rotation {result.rotation})")
            text = export.page_text(pages[-1])
            if not args.json and text:
                print(text)
        results.append({"file": str(path), "pages": pages})
    # Everything was read: only now are files written, so a bad page leaves nothing half-done.
    for shot, png in enumerate(pngs):
        write_atomically(annotate_path(args.annotate, shot), png)
    if args.pdf:
        write_atomically(args.pdf, export.searchable_pdf(pdf_pages))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


def train_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m src.ocr train", description="Rebuild the OCR reader from train.csv."
    )
    parser.add_argument("--data-dir", help="the competition data (default: found as python -m src.submit finds it)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-rows", type=int, help="train on a stratified subsample (quick checks)")
    parser.add_argument("--seed", type=int, help="the first member's seed (the others: seed + 1, ...)")
    parser.add_argument("--members", type=int, help="networks to train and average (default 2)")
    parser.add_argument("--elastic", type=float, metavar="P", help="share of digits bent elastically (default 0)")
    parser.add_argument("--workers", type=int, help="processes drawing training digits (default: all cores but one)")
    parser.add_argument("--out", type=Path, default=reader.WEIGHTS, help=f"where to write (default {reader.WEIGHTS})")
    args = parser.parse_args(argv)
    from src import data

    folder = data.find_data_dir(args.data_dir)
    if folder is None:
        raise DigitsError("no competition data found: put train.csv in input/digit-recognizer/ or pass --data-dir")
    config = with_overrides(
        ReaderConfig(),
        epochs=args.epochs,
        max_rows=args.max_rows,
        seed=args.seed,
        members=args.members,
        workers=args.workers,
        elastic_p=args.elastic,
    )
    images, labels, _, _ = data.load_train(folder)
    reader.build(images, labels, config, args.out, log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
