"""How `cmrfm` reports a user's error: one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import sys
from typing import NoReturn


class UsageError(Exception):
    """An argument checked before any work starts: main() prints it as one line, exit 2."""


def fail(command: str, error: object) -> NoReturn:
    """A user's error: one line on stderr naming the command, exit 2 (argparse's code for bad
    usage), no traceback."""
    print(f"cmrfm {command}: error: {error}", file=sys.stderr)
    raise SystemExit(2)


# Errors whose message says what to fix; anything else keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, UsageError)
