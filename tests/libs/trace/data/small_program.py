"""A small real program for the py-spy tests: known functions with known shares of the work.

Per round, ``heavy`` does three times the work of ``light``, and ``recurse`` goes three frames
deep before doing one unit, so a profile should show heavy ~ 3x light, ``recurse`` nested in
itself, and ``spin`` as the leaf that owns almost all the exclusive time.
"""

import sys
import time

UNIT = 20_000


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def heavy() -> int:
    return spin(3 * UNIT)


def light() -> int:
    return spin(UNIT)


def recurse(depth: int) -> int:
    if depth == 0:
        return spin(UNIT)
    return recurse(depth - 1)


def main(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        heavy()
        light()
        recurse(2)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.5)
