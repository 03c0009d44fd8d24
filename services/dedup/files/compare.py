"""Byte-by-byte comparison of a candidate group: the proof that files are equal.

Hashes only nominate candidates; this module decides. All files of a group are read in
lock-step, one chunk each, and split into classes whenever their chunks differ, so every file
is read once. Memory is (files in the batch) x (chunk size), bounded by MEMORY_BUDGET.
Groups larger than MAX_OPEN files are compared against class representatives in batches, so
open file descriptors stay bounded as well.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from services.dedup.files.reader import ByteCounter, Hasher, OpenedFile, buffers
from services.dedup.files.walk import FileEntry

MEMORY_BUDGET = 32 << 20
MAX_OPEN = 128
MIN_CHUNK = 64 << 10
MAX_CHUNK = 256 << 10  # fits in L2 with its twin: memcmp then runs at cache speed

OnError = Callable[[FileEntry, OSError], None]


def equal_classes(
    entries: Sequence[FileEntry],
    counter: ByteCounter,
    on_error: OnError,
    new_hasher: Callable[[], Hasher] | None = None,
) -> list[tuple[list[FileEntry], bytes | None]]:
    """Split `entries` (all of one size) into classes of byte-identical files.

    Returns every class, singletons included, each with the digest of its content when
    `new_hasher` is given (the bytes are hashed as they are compared, so a group that had no
    full hash yet is read exactly once). Files that fail to read or change while being read
    are reported through `on_error` and left out.
    """
    if len(entries) <= MAX_OPEN:
        return _lockstep(list(entries), counter, on_error, new_hasher)
    # Too many to hold open at once: settle a batch, then compare the rest batch by batch
    # with one representative of each class found so far at the front of the batch.
    classes: list[list[FileEntry]] = []
    pending = list(entries)
    while pending:
        reps = [c[0] for c in classes]
        room = max(1, MAX_OPEN - len(reps))
        batch, pending = pending[:room], pending[room:]
        if len(reps) >= MAX_OPEN:
            # Pathological: very many distinct contents of one size; fall back to pairwise
            # comparison against each representative, still with bounded descriptors.
            for entry in batch:
                _place_pairwise(entry, classes, counter, on_error)
            continue
        found = _lockstep(reps + batch, counter, on_error, None)
        rep_ids = {id(r) for r in reps}
        by_rep = {id(c[0]): c for c in classes}
        for cls, _ in found:
            anchor = next((e for e in cls if id(e) in rep_ids), None)
            new_members = [e for e in cls if id(e) not in rep_ids]
            if anchor is None:
                classes.append(new_members)
            else:
                by_rep[id(anchor)].extend(new_members)
    return [(c, None) for c in classes]


def _place_pairwise(
    entry: FileEntry, classes: list[list[FileEntry]], counter: ByteCounter, on_error: OnError
) -> None:
    for cls in classes:
        result = [c for c, _ in _lockstep([cls[0], entry], counter, on_error, None)]
        for c in result:
            if len(c) == 2:
                cls.append(entry)
                return
        if not any(entry in c for c in result):
            return  # entry failed to read; already reported
    classes.append([entry])


def _lockstep(
    entries: list[FileEntry],
    counter: ByteCounter,
    on_error: OnError,
    new_hasher: Callable[[], Hasher] | None,
) -> list[tuple[list[FileEntry], bytes | None]]:
    opened: dict[int, OpenedFile] = {}
    failed: set[int] = set()

    def fail(i: int, exc: OSError) -> None:
        failed.add(i)
        f = opened.pop(i, None)
        if f is not None:
            f.close(check=False)
        on_error(entries[i], exc)

    finished: list[tuple[list[int], Hasher | None]] = []
    try:
        for i, e in enumerate(entries):
            try:
                opened[i] = OpenedFile(e, counter)
            except OSError as exc:
                fail(i, exc)
        chunk = max(MIN_CHUNK, min(MAX_CHUNK, MEMORY_BUDGET // max(1, len(entries))))
        bufs = buffers(len(entries), chunk)
        views = [memoryview(b) for b in bufs]
        # Each active class: members still equal so far, and the hash of the bytes they share.
        active: list[tuple[list[int], Hasher | None]] = [
            (sorted(opened), new_hasher() if new_hasher else None)
        ]
        offset = 0
        size = entries[0].size if entries else 0
        while active:
            next_active: list[tuple[list[int], Hasher | None]] = []
            for members, hasher in active:
                got: list[tuple[int, int]] = []
                for i in members:
                    try:
                        got.append((i, opened[i].read_into(offset, bufs[i])))
                    except OSError as exc:
                        fail(i, exc)
                if not got:
                    continue
                first, n0 = got[0]
                # Common case first: every chunk equals the first. Whole reused buffers compare
                # with one memcmp and no copy; only a short last chunk or a difference copies.
                if all(n == n0 for _, n in got) and (
                    all(bufs[i] == bufs[first] for i, _ in got[1:])
                    if n0 == chunk
                    else all(bufs[i][:n0] == bufs[first][:n0] for i, _ in got[1:])
                ):
                    split = {b"": [i for i, _ in got]}
                    lengths = {b"": n0}
                    reps = {b"": first}
                else:
                    split, lengths, reps = {}, {}, {}
                    for i, n in got:
                        key = bytes(views[i][:n])
                        split.setdefault(key, []).append(i)
                        lengths[key] = n
                        reps.setdefault(key, i)
                for key, same in split.items():
                    n = lengths[key]
                    h = hasher
                    if h is not None:
                        if len(split) > 1:
                            h = h.copy()  # type: ignore[attr-defined]
                        h.update(views[reps[key]][:n])
                    if len(same) == 1 or not n or offset + n >= size:
                        finished.append((same, h))
                    else:
                        next_active.append((same, h))
            active = next_active
            offset += chunk
        # A file that grew, shrank or was touched while we read it proves nothing.
        for i in list(opened):
            f = opened.pop(i)
            try:
                f.close(check=True)
            except OSError as exc:
                failed.add(i)
                on_error(entries[i], exc)
    finally:
        for f in opened.values():
            f.close(check=False)
    result = []
    for members, hasher in finished:
        alive = [entries[i] for i in members if i not in failed]
        if alive:
            result.append((alive, hasher.digest() if hasher is not None else None))
    return result


def files_equal(a: str | bytes | os.PathLike, b: str | bytes | os.PathLike, chunk: int = MAX_CHUNK) -> bool:
    """Plain two-file comparison by path, used by actions just before they touch anything."""
    with open(a, "rb", buffering=0) as fa, open(b, "rb", buffering=0) as fb:
        if os.fstat(fa.fileno()).st_size != os.fstat(fb.fileno()).st_size:
            return False
        while True:
            da = fa.read(chunk)
            db = fb.read(chunk)
            if da != db:
                return False
            if not da:
                return True
