"""Publish a submission, the one way every command does it: validate, write, metadata, register.

    publish(labels, out_dir, stem, metadata, preset=..., cv=...)

writes <out_dir>/<stem>.csv and <stem>.json as new files (a name taken by another run, even one
finishing in the same second in another process, moves on to <stem>_2, ...), points
<out_dir>/submission.csv at the newest, and appends a `written` row to <out_dir>/index.csv.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from src import registry
from src.errors import DigitsError
from src.files import write_atomically

SUBMISSION_NAME = "submission.csv"


def timestamp() -> str:
    """UTC, sortable, safe in file names: 20261126-164500."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def make_submission(labels: np.ndarray) -> pd.DataFrame:
    """Kaggle's frame for labels int [N] in test.csv order."""
    return pd.DataFrame({"ImageId": np.arange(1, len(labels) + 1), "Label": labels.astype(int)})


def validate_submission(frame: pd.DataFrame, n_test: int, name: str = "submission") -> None:
    """Kaggle's rules: columns ImageId,Label; one row per test image; ImageId 1..N in order; Label 0-9."""
    if list(frame.columns) != ["ImageId", "Label"]:
        raise DigitsError(f"{name}: columns must be ImageId,Label, not {','.join(map(str, frame.columns))}")
    if len(frame) != n_test:
        raise DigitsError(f"{name}: {len(frame)} rows, but the test set has {n_test}")
    for column in frame.columns:
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise DigitsError(f"{name}: column {column} holds non-integers")
    wrong_id = np.flatnonzero(frame["ImageId"].to_numpy() != np.arange(1, n_test + 1))
    if len(wrong_id):
        raise DigitsError(f"{name}: line {wrong_id[0] + 2}: ImageId must be {wrong_id[0] + 1} (1..N in test.csv order)")
    bad_label = np.flatnonzero(~frame["Label"].between(0, 9).to_numpy())
    if len(bad_label):
        raise DigitsError(f"{name}: line {bad_label[0] + 2}: Label {frame['Label'].iloc[bad_label[0]]} is outside 0-9")


def read_submission(path: Path, n_test: int | None = None) -> pd.DataFrame:
    """Read and validate a submission CSV (n_test: expected rows; None: as many as it has)."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DigitsError(f"{path}: no such file") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else "empty"
        raise DigitsError(f"{path}: not a readable CSV ({reason})") from None
    validate_submission(frame, len(frame) if n_test is None else n_test, str(path))
    return frame


def claim_new(out_dir: Path, stem: str, csv_text: str) -> Path:
    """Write <stem>.csv, or <stem>_2.csv, ...: the first name nobody holds (atomic: no two processes share one)."""
    for n in range(1, 1000):
        path = out_dir / (f"{stem}.csv" if n == 1 else f"{stem}_{n}.csv")
        try:
            write_atomically(path, csv_text, overwrite=False)
            return path
        except DigitsError:
            continue
    raise DigitsError(f"{out_dir}: 999 submissions named {stem}*; choose another --out")


def publish(labels: np.ndarray, out_dir: Path, stem: str, metadata: dict[str, Any], **row: Any) -> Path:
    """Validate and write the submission for labels int [N], its metadata, submission.csv, and its registry row.

    `row` holds the registry's other columns (preset, cv, hparams_source, message).
    """
    frame = make_submission(labels)
    validate_submission(frame, metadata.get("test_rows", len(labels)))
    csv_text = frame.to_csv(index=False)
    path = claim_new(out_dir, stem, csv_text)
    write_atomically(path.with_suffix(".json"), json.dumps(metadata, indent=2, default=str) + "\n", overwrite=False)
    write_atomically(out_dir / SUBMISSION_NAME, csv_text)
    registry.append(out_dir / registry.INDEX_NAME, event="written", file=path.name, **row)
    return path
