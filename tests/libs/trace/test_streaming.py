"""Streaming: parser + stack machine hold O(depth) state, so memory does not grow with the
input; the call tree grows with distinct call paths, not with events."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

from libs.trace import CallTree, read_trace


def log(rounds: int) -> Iterator[str]:
    """A generated log, never materialised: main > (load > read, work > work) per round."""
    ts = 0
    for _ in range(rounds):
        for line in ("main:start", "load:start", "read:start", "read:end", "load:end", "work:start",
                     "work:start", "work:end", "work:end", "main:end"):  # fmt: skip
            ts += 1
            yield f"{line}:{ts}\n"


def peak_bytes(rounds: int) -> int:
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_trace(log(rounds), format="startend").events)
        assert count == rounds * 10
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_stack_machine_memory_does_not_grow_with_the_input() -> None:
    small, large = peak_bytes(500), peak_bytes(10_000)  # 5,000 and 100,000 events
    assert large < 64 * 1024
    assert large < 2 * small + 16 * 1024  # flat, not 20x


def test_call_tree_size_is_distinct_paths_not_events() -> None:
    tree = CallTree.from_events(read_trace(log(5_000), format="startend").events)
    assert sum(1 for _ in tree.root.walk()) == 5  # main, main;load, main;load;read, main;work, main;work;work
    assert tree.total == 5_000 * 10 - 5_000  # each round spans 9 ticks plus a 1-tick gap before it
