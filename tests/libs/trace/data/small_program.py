"""A small real program for the py-spy tests: known functions with known shares of the work.

Per round, ``heavy`` does three times the work of ``light``, and ``recurse`` goes three frames
deep before doing one unit, so a profile should show heavy ~ 3x light, ``recurse`` nested in
itself, and ``spin`` as the leaf that owns almost all the exclusive time.

    python small_program.py [SECONDS]      # work for SECONDS of wall-clock time (default 2.5)
    python small_program.py --rounds N     # do N rounds of work, however long they take
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


def main(seconds: float, rounds: int | None = None) -> None:
    """Work for ``seconds`` of wall-clock time, or (``rounds``) a fixed amount of work however
    long the machine takes for it: the live test records the whole run, so a slow start
    under load cannot leave it without samples."""
    deadline = time.monotonic() + seconds
    done = 0
    while (done < rounds) if rounds is not None else (time.monotonic() < deadline):
        heavy()
        light()
        recurse(2)
        done += 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rounds":
        main(0.0, int(sys.argv[2]))
    else:
        main(float(sys.argv[1]) if len(sys.argv) > 1 else 2.5)
