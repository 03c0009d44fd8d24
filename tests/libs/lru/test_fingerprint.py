"""code_fingerprint: changes with what a function executes, nothing else, in every process."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from libs.lru.fingerprint import code_fingerprint

REPO = Path(__file__).resolve().parents[3]


def compiled(source: str, name: str = "f", filename: str = "<a>") -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(textwrap.dedent(source), filename, "exec"), namespace)
    return namespace[name]


def test_same_code_elsewhere_has_the_same_fingerprint() -> None:
    a = compiled("def f(x):\n    return x * 2\n", filename="<a>")
    b = compiled("\n\n\n# moved\ndef g(x):\n    return x * 2\n", name="g", filename="<b>")
    assert code_fingerprint(a) == code_fingerprint(b)


def test_every_kind_of_change_to_the_code_changes_the_fingerprint() -> None:
    bodies = [
        "def f(x):\n    return x * 2\n",
        "def f(x):\n    return x * 3\n",  # a constant
        "def f(x):\n    return x + 2\n",  # an operator
        "def f(y):\n    return y * 2\n",  # a parameter name (keyword callers see it)
        "def f(x, /):\n    return x * 2\n",  # the argument layout
        "def f(x):\n    return abs(x) * 2\n",  # a global name
        "def f(x):\n    return (lambda y: y * 2)(x)\n",
        "def f(x):\n    return (lambda y: y * 4)(x)\n",  # a nested code object
        "def f(x):\n    return [y * 2 for y in x]\n",
        "def f(x):\n    return x in {'a', 'b'}\n",
        "def f(x):\n    return x in {'a', 'c'}\n",  # a frozenset constant
        "def f(x):\n    try:\n        return x * 2\n    except TypeError:\n        return 0\n",
    ]
    prints = {code_fingerprint(compiled(b)) for b in bodies}
    assert len(prints) == len(bodies)


def test_a_wrapped_function_is_part_of_its_wrappers_fingerprint() -> None:
    def wrap(func: Any) -> Any:
        @functools.wraps(func)
        def wrapper(*args: Any) -> Any:
            return func(*args)

        return wrapper

    a = wrap(compiled("def f(x):\n    return x * 2\n"))
    b = wrap(compiled("def f(x):\n    return x * 3\n"))
    assert code_fingerprint(a) != code_fingerprint(b)


def test_builtins_and_callable_objects_have_a_fingerprint() -> None:
    class Doubler:
        def __call__(self, x: int) -> int:
            return x * 2

    assert code_fingerprint(max) != code_fingerprint(min)
    assert code_fingerprint(Doubler()) == code_fingerprint(Doubler())


def test_fingerprint_is_the_same_under_every_string_hash_seed() -> None:
    # A frozenset constant iterates in the order of salted string hashes, which differs per process.
    script = (
        "from libs.lru.fingerprint import code_fingerprint\n"
        "def f(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta', 'epsilon'}\n"
        "print(code_fingerprint(f))\n"
    )
    outputs = set()
    for seed in ("1", "2", "3", "4"):
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, check=True
        )
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1
