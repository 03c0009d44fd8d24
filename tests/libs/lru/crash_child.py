"""Child process for the crash test: apply a deterministic op sequence to a PersistentLRU,
acknowledging each op on stdout only after it returned, until killed.

    python -m tests.libs.lru.crash_child DIRECTORY SEED START SYNC

Prints "ready" once the directory is open, then the index of every op it completed.
"""

from __future__ import annotations

import random
import sys
from collections import OrderedDict
from typing import Any

from libs.lru import PersistentLRU

CAPACITY = 16
KEYS = 40
SNAPSHOT_EVERY = 37  # small, so kills often land inside or next to a compaction
TOTAL_OPS = 1_000_000  # more than any run completes

Op = tuple[Any, ...]


def op_at(seed: int, index: int) -> Op:
    """Op number ``index`` of the sequence for ``seed``; random access, so a restarted child
    continues exactly where the recovered state says it is."""
    rng = random.Random(seed * 10_000_019 + index)
    key = f"k{rng.randrange(KEYS)}"
    r = rng.random()
    if r < 0.50:
        # Mostly small values, sometimes big ones that span pages (more room for a torn write).
        size = rng.choice((0, 10, 100, 5000)) if rng.random() < 0.9 else 70_000
        return ("put", key, (index, key, b"v" * size))
    if r < 0.85:
        return ("get", key)
    if r < 0.97:
        return ("delete", key)
    if r < 0.995:
        return ("peek", key)
    return ("clear",)


def apply_to_model(model: OrderedDict[str, Any], op: Op) -> None:
    """The reference semantics of one op, written from the LRU contract (not from libs.lru)."""
    kind = op[0]
    if kind == "put":
        model[op[1]] = op[2]
        model.move_to_end(op[1])
        if len(model) > CAPACITY:
            model.popitem(last=False)
    elif kind == "get":
        if op[1] in model:
            model.move_to_end(op[1])
    elif kind == "delete":
        model.pop(op[1], None)
    elif kind == "clear":
        model.clear()


def apply_to_cache(cache: PersistentLRU[str, Any], op: Op) -> None:
    kind = op[0]
    if kind == "put":
        cache.put(op[1], op[2])
    elif kind == "get":
        cache.get(op[1])
    elif kind == "delete":
        cache.delete(op[1])
    elif kind == "peek":
        cache.peek(op[1])
    else:
        cache.clear()


def main(argv: list[str]) -> None:
    directory, seed, start, sync = argv[0], int(argv[1]), int(argv[2]), argv[3]
    cache: PersistentLRU[str, Any] = PersistentLRU(
        directory,
        CAPACITY,
        snapshot_every=SNAPSHOT_EVERY,
        sync=sync,  # type: ignore[arg-type]
    )
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for index in range(start, TOTAL_OPS):
        apply_to_cache(cache, op_at(seed, index))
        out.write(f"{index}\n")
        out.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
