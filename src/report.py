"""What the models do: a run's plots and tables on one page.

    python -m src.report [RUN_DIR] [--out DIR]

Reads runs/<run>/ (default: the latest finished run) and writes RUN_DIR/report/: confusion.png,
classes.csv, roc.png, learning_curves.png, mistakes.png, label_issues.png and .csv (likely mislabelled
training rows), samples.png and index.html (see src/diagnostics.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src import diagnostics, ensemble
from src.errors import DigitsError, run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", help="a run folder (default: the latest under --runs-dir)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir) if args.run_dir else ensemble.latest_run(Path(args.runs_dir))
    if not run_dir.is_dir():
        raise DigitsError(f"{run_dir}: no such run folder")
    page = diagnostics.make_report(run_dir, Path(args.out) if args.out else run_dir / "report")
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
