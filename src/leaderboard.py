"""Leaderboard iteration: the registry of submissions, Kaggle submit/sync, diff and blend.

    python -m src.leaderboard list
    python -m src.leaderboard submit FILE -m MSG
    python -m src.leaderboard sync
    python -m src.leaderboard diff A B
    python -m src.leaderboard blend A B C ... [--weights W ...]

The registry is submissions/index.csv (src/registry.py). submit and sync call the Kaggle CLI
(`pip install kaggle`, token in ~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from src import data, registry
from src.errors import DigitsError, run_cli
from src.publish import publish, read_submission, timestamp

COMPETITION = "digit-recognizer"
KAGGLE_TEST_ROWS = 28_000


def resolve(name: str, folder: Path) -> Path:
    """A submission given as a path or as a file name inside the submissions folder."""
    path = Path(name)
    if path.is_file():
        return path
    if (folder / name).is_file():
        return folder / name
    raise DigitsError(f"{name}: no such submission file (looked here and in {folder}/)")


def metadata_of(path: Path) -> dict:
    meta = path.with_suffix(".json")
    return json.loads(meta.read_text()) if meta.is_file() else {}


def expected_rows(path: Path) -> int:
    return int(metadata_of(path).get("test_rows", KAGGLE_TEST_ROWS))


def kaggle(*args: str) -> str:
    """Run the Kaggle CLI; a clear DigitsError when it is missing, has no credentials, or fails."""
    exe = shutil.which("kaggle")
    if exe is None:
        raise DigitsError("the Kaggle CLI is not installed: pip install kaggle (nothing was recorded)")
    config_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    has_env = os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")
    if not (has_env or os.environ.get("KAGGLE_API_TOKEN") or (config_dir / "kaggle.json").is_file()):
        raise DigitsError(
            f"no Kaggle credentials: put your API token in {config_dir}/kaggle.json "
            "or set KAGGLE_USERNAME and KAGGLE_KEY (nothing was recorded)"
        )
    result = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DigitsError(f"kaggle {args[0]} {args[1]} failed: {detail[-1] if detail else result.returncode}")
    return result.stdout


def cmd_list(folder: Path) -> None:
    rows = registry.latest(folder / registry.INDEX_NAME)
    if not rows:
        print(f"no submissions registered in {folder / registry.INDEX_NAME}")
        return
    table = pd.DataFrame(rows)[
        ["time", "file", "preset", "cv", "public_score", "private_score", "submitted", "message"]
    ]
    print(table.rename(columns={"public_score": "public", "private_score": "private"}).to_string(index=False))


def cmd_submit(folder: Path, name: str, message: str) -> None:
    path = resolve(name, folder)
    read_submission(path, expected_rows(path))  # never send a file that fails validation
    entry = next((r for r in registry.latest(folder / registry.INDEX_NAME) if r["file"] == path.name), {})
    cv = entry.get("cv") or metadata_of(path).get("cv_accuracy", "")
    description = f"{message} | cv={cv}" if cv != "" else message
    kaggle("competitions", "submit", COMPETITION, "-f", str(path), "-m", description)
    registry.append(
        folder / registry.INDEX_NAME,
        event="submitted",
        file=path.name,
        preset=entry.get("preset"),
        cv=cv,
        message=message,
    )
    print(f"submitted {path} as {description!r}")


def column_key(name: str) -> str:
    """fileName, file_name and "File Name" are one column: the CLI's spelling has changed between versions."""
    return re.sub(r"[^a-z]", "", name.lower())


def scores_table(out: str) -> list[tuple[str, str, str]]:
    """(file name, public score, private score) per row of `kaggle competitions submissions -v`, columns found by
    name; a missing column is an error, never a silent empty sync."""
    reader = csv.DictReader(io.StringIO(out))
    columns = {column_key(c): c for c in reader.fieldnames or []}
    wanted = [columns.get(key) for key in ("filename", "publicscore", "privatescore")]
    if None in wanted:
        missing = ("fileName", "publicScore", "privateScore")[wanted.index(None)]
        shown = ", ".join(reader.fieldnames or []) or "none"
        raise DigitsError(f"kaggle competitions submissions: no {missing} column in its output (columns: {shown}); "
                          "nothing was recorded")  # fmt: skip
    name, public, private = wanted
    return [(row[name] or "", row[public] or "", row[private] or "") for row in reader]


def cmd_sync(folder: Path) -> None:
    rows = scores_table(kaggle("competitions", "submissions", COMPETITION, "-v"))
    known = {r["file"]: r for r in registry.latest(folder / registry.INDEX_NAME)}
    found = 0
    for name, public, private in rows:
        if name not in known or not public:
            continue
        if known[name].get("public_score") == public and known[name].get("private_score") == private:
            continue
        registry.append(
            folder / registry.INDEX_NAME, event="scored", file=name, public_score=public, private_score=private
        )
        found += 1
    print(f"recorded {found} new score(s) from {len(rows)} Kaggle submission(s)")


def cmd_diff(folder: Path, a: str, b: str, show_all: bool) -> None:
    path_a, path_b = resolve(a, folder), resolve(b, folder)
    first, second = read_submission(path_a), read_submission(path_b)
    if len(first) != len(second):
        raise DigitsError(f"{path_a.name} has {len(first)} rows, {path_b.name} has {len(second)}")
    differ = np.flatnonzero(first["Label"].to_numpy() != second["Label"].to_numpy())
    print(f"{len(differ)} of {len(first)} labels differ ({100 * len(differ) / len(first):.3f}%)")
    shown = differ if show_all else differ[:20]
    for i in shown:
        print(f"  ImageId {i + 1}: {first['Label'].iloc[i]} -> {second['Label'].iloc[i]}")
    if len(shown) < len(differ):
        print(f"  ... and {len(differ) - len(shown)} more (--all lists them)")


def run_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray, Path] | None:
    """(test probs [M, 10], OOF probs [N, 10], run folder) of the run that wrote `path`, when still on disk."""
    run = metadata_of(path).get("run")
    if not run or not (Path(run) / "test_probs.npy").is_file() or not (Path(run) / "oof_probs.npy").is_file():
        return None
    return np.load(Path(run) / "test_probs.npy"), np.load(Path(run) / "oof_probs.npy"), Path(run)


def blend_cv(probs: list, weights: np.ndarray) -> float | None:
    """CV of the weighted probability average, when every run scored the same train rows and the data is here."""
    rows = [np.load(run / "train_rows.npy") for _, _, run in probs if (run / "train_rows.npy").is_file()]
    if len(rows) != len(probs) or any(not np.array_equal(rows[0], r) for r in rows):
        return None
    folder = Path(json.loads((probs[0][2] / "config.json").read_text())["data"]["folder"])
    if not data.has_data(folder):
        return None
    labels = data.load_train(folder)[1][rows[0]]
    oof = sum(w * p[1] for w, p in zip(weights, probs))
    return float(np.mean(oof.argmax(1) == labels))


def cmd_blend(folder: Path, names: list[str], weights: list[float] | None, message: str) -> Path:
    if len(names) < 2:
        raise DigitsError("blend needs at least two submissions")
    if weights is not None and len(weights) != len(names):
        raise DigitsError(f"--weights: {len(weights)} given for {len(names)} submissions")
    paths = [resolve(n, folder) for n in names]
    frames = [read_submission(p, expected_rows(p)) for p in paths]
    if len({len(f) for f in frames}) != 1:
        raise DigitsError("the submissions have different numbers of rows")
    w = np.asarray(weights if weights is not None else [1.0] * len(paths), float)
    w = w / w.sum()
    probs = [run_probabilities(p) for p in paths]
    cv = None
    if all(p is not None for p in probs):
        method = "averaged probabilities"
        labels = sum(wi * p[0] for wi, p in zip(w, probs)).argmax(1)
        cv = blend_cv(probs, w)
    else:
        method = "weighted majority vote"
        votes = np.zeros((len(frames[0]), 10))
        for wi, frame in zip(w, frames):
            votes[np.arange(len(frame)), frame["Label"].to_numpy()] += wi
        labels = votes.argmax(1)  # ties go to the smaller label: deterministic
    stamp = timestamp()
    stem = f"{stamp}_blend{len(paths)}_cv{cv:.5f}" if cv is not None else f"{stamp}_blend{len(paths)}"
    meta = {"blend_of": [p.name for p in paths], "weights": w.tolist(), "method": method, "cv_accuracy": cv,
            "test_rows": len(frames[0]), "message": message, "created": stamp}  # fmt: skip
    out = publish(
        labels, folder, stem, meta, preset="blend", cv="" if cv is None else f"{cv:.5f}", message=message or method
    )
    print(f"wrote {out} ({method}{'' if cv is None else f', CV {cv:.5f}'})")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="submissions", help="the submissions folder (default: submissions/)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered submissions, newest first, CV next to leaderboard scores")
    s = sub.add_parser("submit", help="send a submission to Kaggle and record it")
    s.add_argument("file")
    s.add_argument("-m", "--message", required=True)
    sub.add_parser("sync", help="record the leaderboard scores Kaggle reports")
    d = sub.add_parser("diff", help="how many labels two submissions disagree on, and where")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--all", action="store_true")
    b = sub.add_parser("blend", help="blend submissions into a new one")
    b.add_argument("files", nargs="+")
    b.add_argument("--weights", type=float, nargs="+")
    b.add_argument("-m", "--message", default="")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    if args.command == "list":
        cmd_list(folder)
    elif args.command == "submit":
        cmd_submit(folder, args.file, args.message)
    elif args.command == "sync":
        cmd_sync(folder)
    elif args.command == "diff":
        cmd_diff(folder, args.a, args.b, args.all)
    else:
        cmd_blend(folder, args.files, args.weights, args.message)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
