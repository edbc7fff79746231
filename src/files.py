"""The one atomic writer: a reader sees the old file or the whole new one, never half of one."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from src.errors import DigitsError


def write_atomically(path: Path, data: bytes | str, overwrite: bool = True) -> None:
    """Write `path` through a temporary file in its folder; with overwrite=False, fail if it exists (race-free)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; the result is an ordinary file
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and fails if `path` exists
            except FileExistsError:
                raise DigitsError(f"{path}: already exists; refusing to overwrite it") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def copy_folder_atomically(source: Path, target: Path) -> None:
    """Copy the folder `source` to `target` (which must not exist) through a temporary folder beside it, so that
    `target` appears whole or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; the result is an ordinary folder
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
