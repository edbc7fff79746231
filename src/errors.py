"""One error type for bad input, and the wrapper that turns it into a one-line message and exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class DigitsError(Exception):
    """Bad input or a failed precondition: the message names the file, row or column and what to do."""


def run_cli(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command's `main`, printing a DigitsError as one line on stderr instead of a traceback."""
    try:
        return main(argv) or 0
    except DigitsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
