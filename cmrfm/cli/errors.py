"""How `cmrfm` reports a user's error: one line on stderr, exit 2, no traceback."""

from __future__ import annotations

import os
import sys
from typing import NoReturn


class UsageError(Exception):
    """An argument checked before any work starts: main() prints it as one line, exit 2."""


def fail(command: str, error: object) -> NoReturn:
    """A user's error: one line on stderr naming the command, exit 2 (argparse's code for bad
    usage), no traceback; with CMRFM_DEBUG=1, an exception given is raised with its traceback."""
    if os.environ.get("CMRFM_DEBUG") and isinstance(error, BaseException):
        raise error
    print(f"cmrfm {command}: error: {error}", file=sys.stderr)
    raise SystemExit(2)


# Errors whose message says what to fix; anything else keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, UsageError)
