"""Command-line plumbing every CLI of the project shares: bad input is one line and exit 2.

argparse prints its usage block and then the error; the project's rule is one line that names
what is wrong. `ArgumentParser.error` raises UsageError instead; each CLI's main catches UsageError (its own
checks raise it too), prints `error: <message>` and returns EXIT_USAGE.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command line or input named on it; reported as one line with exit status 2."""


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer >= `minimum`; anything else is argparse's one-line error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    return parse
