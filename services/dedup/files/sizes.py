"""What the command line names before anything is scanned: sizes as people write them (4096,
10K, 1M, 2G: powers of 1024) and the names of the actions and keep rules, so that parsing
`scan`'s arguments imports nothing a scan without an action does not use (actions.py checks
its tables against these names)."""

from __future__ import annotations

import argparse
import re

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """argparse.ArgumentTypeError (one line) on anything else, so argparse says it as exit 2."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 4096, 10K, 1M or 2G, got {text!r}")
    n = int(m.group(1))
    return n * 1024 ** " kmgt".index((m.group(2) or " ").lower())


ACTIONS = ("hardlink", "reflink", "symlink", "delete", "quarantine")
KEEP_RULE_NAMES = ("oldest", "newest", "first", "shortest-path", "longest-path")
