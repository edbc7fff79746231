"""The append-only registry of submissions: submissions/index.csv.

One row per event (`written` by the kit, `submitted` to Kaggle, `scored` by Kaggle). Rows are only ever
appended, each with one locked O_APPEND write, so concurrent writers never interleave; a row cut off
by a crash is skipped when reading and sealed off by the next append.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
from datetime import UTC, datetime
from pathlib import Path

COLUMNS = [
    "time", "event", "file", "preset", "cv", "hparams_source", "git_commit", "message",
    "public_score", "private_score",
]  # fmt: skip
INDEX_NAME = "index.csv"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def append(index: Path, **row: object) -> None:
    """Append one event row; unknown keys are an error, missing ones are left empty."""
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"registry has no column(s) {sorted(unknown)}")
    row.setdefault("time", now())
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(["" if row.get(c) is None else row.get(c) for c in COLUMNS])
    index.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(index, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        prefix = ""
        if size == 0:
            prefix = ",".join(COLUMNS) + "\n"
        elif os.pread(fd, 1, size - 1) != b"\n":
            prefix = "\n"  # seal a row that a crash cut off
        os.write(fd, (prefix + buffer.getvalue()).encode())
    finally:
        os.close(fd)  # closing releases the lock


def read(index: Path) -> list[dict[str, str]]:
    """Every complete, well-formed row, oldest first."""
    if not index.is_file():
        return []
    text = index.read_text()
    rows = []
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n") or line.startswith("time,event,"):
            continue
        cells = next(csv.reader([line]))
        if len(cells) == len(COLUMNS):
            rows.append(dict(zip(COLUMNS, cells)))
    return rows


def latest(index: Path) -> list[dict[str, str]]:
    """One row per file, its fields merged from all its events (later non-empty values win), newest first."""
    merged: dict[str, dict[str, str]] = {}
    for row in read(index):
        entry = merged.setdefault(row["file"], {**row, "submitted": ""})
        for key, value in row.items():
            if value and key not in ("time", "event"):
                entry[key] = value
        if row["event"] == "submitted":
            entry["submitted"] = row["time"]
    return sorted(merged.values(), key=lambda r: r["time"], reverse=True)
