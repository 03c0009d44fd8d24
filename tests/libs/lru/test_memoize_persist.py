"""memoize(persist=...): results survive a real process restart."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import sys
    from libs.lru import memoize

    computed = []

    @memoize(maxsize=3, persist=sys.argv[1])
    def slow_square(x, scale=1, *, tags=()):
        computed.append(x)
        return {"x": x, "square": x * x * scale, "tags": sorted(tags)}

    for arg in sys.argv[2:]:
        slow_square(int(arg), tags=["b", "a"])
    # scale=1 is the default, so only the tuple-vs-list tags make this a different key.
    slow_square(2, 1, tags=("a", "b"))
    print(",".join(map(str, computed)), slow_square.cache_info().currsize)
    """
)


def run(script: Path, cache_dir: Path, *args: int) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), str(cache_dir), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_results_survive_a_restart_and_lru_order_is_kept(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    cache_dir = tmp_path / "cache"
    # First run computes 1, 2, 3 (list tags) and 2 (tuple tags); maxsize 3 evicts 1.
    assert run(script, cache_dir, 1, 2, 3) == "1,2,3,2 3"
    # Second run, restored order [2L, 2T, 3L]: 3 and 2L hit; 1 is computed and evicts 2T,
    # so the closing tuple-tagged call computes 2 again. Any lost order or entry changes this.
    assert run(script, cache_dir, 3, 2, 1) == "1,2 3"


BODY = textwrap.dedent(
    """
    import sys
    from libs.lru import memoize

    computed = []

    {padding}
    @memoize(persist=sys.argv[1])
    def f(x):
        computed.append(x)
        return {body}

    print(f(5), computed)
    """
)


def run_body(tmp_path: Path, cache_dir: Path, body: str, padding: str = "") -> tuple[str, str]:
    script = tmp_path / "f.py"
    script.write_text(BODY.format(body=body, padding=padding))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), str(cache_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip(), done.stderr


def test_a_changed_function_body_never_gets_results_of_the_old_body(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    assert run_body(tmp_path, cache_dir, "x * 2")[0] == "10 [5]"
    assert run_body(tmp_path, cache_dir, "x * 2")[0] == "10 []"  # same code: read from disk
    out, err = run_body(tmp_path, cache_dir, "x * 3")
    assert out == "15 [5]"  # was "10 []": the result of the old body, from disk
    assert "written by other code" in err and "discarding its 1 entries" in err
    assert run_body(tmp_path, cache_dir, "x * 3")[0] == "15 []"
    # A nested code object (here a lambda) is part of the fingerprint too.
    assert run_body(tmp_path, cache_dir, "(lambda y: y * 3)(x)")[0] == "15 [5]"
    assert run_body(tmp_path, cache_dir, "(lambda y: y * 4)(x)")[0] == "20 [5]"


def test_moving_the_function_keeps_its_cache(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    assert run_body(tmp_path, cache_dir, "x * 2")[0] == "10 [5]"
    out, err = run_body(tmp_path, cache_dir, "x * 2", padding="\n\n\n# moved down\nunrelated = 1\n")
    assert out == "10 []" and "other code" not in err


def test_a_damaged_cache_is_set_aside_and_the_function_still_runs(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    assert run_body(tmp_path, cache_dir, "x * 2")[0] == "10 [5]"
    snapshot = cache_dir / "snapshot"
    damaged = bytearray(snapshot.read_bytes())
    damaged[-1] ^= 0xFF
    snapshot.write_bytes(bytes(damaged))
    out, err = run_body(tmp_path, cache_dir, "x * 2")
    assert out == "10 [5]"
    assert "corrupt LRU snapshot" in err and "files aside" in err
    assert (cache_dir / "snapshot.corrupt").read_bytes() == bytes(damaged)
    assert run_body(tmp_path, cache_dir, "x * 2")[0] == "10 []"
