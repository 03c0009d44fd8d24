"""The pipeline: each stage is a function from candidate groups to smaller groups.

    size buckets -> small files (<= SMALL_MAX): one read each, classes by their bytes
                 -> the rest: head hash -> tail hash -> full streaming hash -> byte verification

A group leaving a stage has at least two files (distinct inodes) that agree on everything
that stage and the ones before it looked at. Each stage records its own statistics (groups
and files in and out, bytes read, seconds, errors), so a report shows where the pruning
happened and what it cost.

Shortcuts, each because the bytes are already known or will be read anyway: files of at most
`partial_size` bytes are wholly covered by the head hash (the tail stage passes them through),
files of at most 2 x `partial_size` by head + tail (the full-hash stage passes them through);
groups of at most LOCKSTEP_GROUP files are hashed by the verify stage while it compares them,
so each of their bytes is read once instead of twice. Verification
is never skipped except for members a previous scan already proved identical under a
cryptographic digest, and whose inode is unchanged since (see hashcache).
"""

from __future__ import annotations

import marshal
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from services.dedup.files.compare import equal_classes
from services.dedup.files.reader import (
    CRYPTOGRAPHIC,
    HASHERS,
    ByteCounter,
    full_digest,
    head_and_tail_digests,
    in_page_cache,
    partial_digest,
    read_small,
    read_small_many,
)
from services.dedup.files.walk import FileEntry, WalkError

if TYPE_CHECKING:  # sqlite3 is imported only by a scan that uses a cache
    from services.dedup.files.hashcache import HashCache

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Group:
    size: int
    files: list[FileEntry]
    # Digest of what the stages have seen; identifies the whole content once it covers it
    # (head for size <= partial_size, head + tail up to 2 x partial_size, else the full hash).
    digest: bytes | None = None

    @property
    def wasted_bytes(self) -> int:
        return self.size * (len(self.files) - 1)


@dataclass(slots=True)
class StageStats:
    name: str
    groups_in: int = 0
    files_in: int = 0
    groups_out: int = 0
    files_out: int = 0
    bytes_read: int = 0
    cache_hits: int = 0
    errors: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}


class Progress(Protocol):
    def start(self, stage: str, total: int) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


# Readers while reads wait on the device (the adaptive default, `workers=0`). Measured on the
# 2-vCPU machine (docs/bench/dedup.md): with the page cache warm one thread is fastest (the
# work is CPU-bound and the GIL serialises it; extra threads only add hand-offs); cold, reads
# block in the kernel with the GIL released, and 4 readers keep a virtio disk busy.
IO_WORKERS = 4
# The adaptive map decides again every this many items, by probing a few of them.
SEGMENT = 2048
PROBES = 8


@dataclass(slots=True)
class ScanConfig:
    algorithm: str = "blake3"
    partial_size: int = 4096
    # 0: adaptive (one reader while the files are in the page cache, IO_WORKERS while reads
    # would wait on the device); N >= 1: always N readers.
    workers: int = 0
    order: str = "inode"  # read in (device, inode) order: close to on-disk order, kind to HDDs
    trust_verified_cache: bool = True

    def __post_init__(self) -> None:
        if self.algorithm not in HASHERS:
            raise ValueError(f"unknown hash algorithm {self.algorithm!r} (choose from {sorted(HASHERS)})")
        if self.order not in {"path", "inode"}:
            raise ValueError(f"unknown order {self.order!r} (choose path or inode)")
        if self.partial_size < 1 or self.workers < 0:
            raise ValueError("partial_size must be positive and workers >= 0 (0: adaptive)")


@dataclass(slots=True)
class ScanContext:
    config: ScanConfig = field(default_factory=ScanConfig)
    cache: HashCache | None = None
    progress: Progress = field(default_factory=NoProgress)
    counter: ByteCounter = field(default_factory=ByteCounter)
    errors: list[WalkError] = field(default_factory=list)
    stages: list[StageStats] = field(default_factory=list)
    segments: int = 0  # adaptive map: segments decided, and how many of them read cold
    # Tail digests the head stage read along with the heads (one open per file, not two):
    # id(entry) -> (entry, digest), taken (and the rest dropped) by the tail stage.
    tails: dict[int, tuple[FileEntry, bytes]] = field(default_factory=dict)
    segments_cold: int = 0

    def report_error(self, entry: FileEntry, exc: OSError) -> None:
        text = str(exc) if exc.__class__.__name__ == "FileChanged" else f"{type(exc).__name__}: {exc}"
        self.errors.append(WalkError(entry.path, text))

    def map(
        self,
        func: Callable[[T], R],
        items: Iterable[T],
        entry_of: Callable[[T], FileEntry] | None = None,
    ) -> Iterator[tuple[T, R | None, BaseException | None]]:
        """Bounded parallel map through libs.queues; a plain loop for one worker or one item.

        With `workers=0` (adaptive) the items go in segments of SEGMENT, and each segment runs
        on one thread when a few of its files (`entry_of(item)`), probed with RWF_NOWAIT, are
        in the page cache, and on IO_WORKERS threads when reads would wait on the device.
        Items travel to the threads in batches: one queue hand-off costs tens of microseconds,
        as much as hashing a small file, so per-item dispatch would eat the gain of the threads.
        """
        items = list(items)
        fixed = self.config.workers
        if fixed or entry_of is None:
            yield from self._map_with(func, items, fixed or 1)
            return
        for start in range(0, len(items), SEGMENT):
            segment = items[start : start + SEGMENT]
            yield from self._map_with(func, segment, self._workers_for(segment, entry_of))

    def readers_for(self, items: list[T], entry_of: Callable[[T], FileEntry]) -> int:
        """The readers for these items (at most about a SEGMENT): the fixed count, else the
        adaptive choice (probed), as `map` makes it per segment."""
        if self.config.workers:
            return self.config.workers
        if len(items) <= 1:
            return 1
        return self._workers_for(items, entry_of)

    def map_with(
        self, func: Callable[[T], R], items: list[T], workers: int
    ) -> Iterator[tuple[T, R | None, BaseException | None]]:
        """`map` with the reader count already chosen (see readers_for)."""
        return self._map_with(func, items, workers)

    def _workers_for(self, segment: list[T], entry_of: Callable[[T], FileEntry]) -> int:
        step = max(1, len(segment) // PROBES)
        cached = [in_page_cache(entry_of(item)) for item in segment[::step][:PROBES]]
        cold = any(c is False for c in cached)
        self.segments_cold += cold
        self.segments += 1
        return IO_WORKERS if cold else 1

    def _map_with(
        self, func: Callable[[T], R], items: list[T], workers: int
    ) -> Iterator[tuple[T, R | None, BaseException | None]]:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                try:
                    yield item, func(item), None
                except Exception as exc:
                    yield item, None, exc
            return
        from libs.queues import parallel_map

        size = max(1, min(256, len(items) // (workers * 8)))
        batches = [items[i : i + size] for i in range(0, len(items), size)]

        def run_batch(batch: list[T]) -> list[tuple[T, R | None, BaseException | None]]:
            out: list[tuple[T, R | None, BaseException | None]] = []
            for item in batch:
                try:
                    out.append((item, func(item), None))
                except Exception as exc:
                    out.append((item, None, exc))
            return out

        for _batch, results, error in parallel_map(run_batch, batches, workers=workers, maxsize=workers * 4):
            if error is not None or results is None:
                raise error if error is not None else RuntimeError("no result")
            yield from results

    def ordered(self, items: list[tuple[int, FileEntry]]) -> list[tuple[int, FileEntry]]:
        if self.config.order == "inode":
            return sorted(items, key=_inode_order)
        return items


Stage = Callable[[list[Group], ScanContext], list[Group]]
# Files up to this size are read whole, once, and compared by their bytes (small_stage).
SMALL_MAX = 4096
# small_stage holds the bytes of one class representative per distinct content of the groups
# it is reading; it reads groups in runs of about this many files to bound that memory.
SMALL_RUN = 1024


def _inode_order(item: tuple[int, FileEntry]) -> tuple[int, int]:
    f = item[1]
    return (f.dev, f._im)  # (inode << 64 | mtime): inode order without the property call


def _second(item: tuple[int, FileEntry]) -> FileEntry:
    return item[1]


def _inode_order3(item: tuple[int, int, FileEntry]) -> tuple[int, int]:
    f = item[2]
    return (f.dev, f._im)


def _first_file(group: Group) -> FileEntry:
    return group.files[0]


# Groups up to this size skip the full-hash stage: verification reads them once, in lock-step.
LOCKSTEP_GROUP = 16
# Groups of files up to this size (and at most LOCKSTEP_GROUP of them) skip the partial hashes.
DIRECT_MAX = 64 << 10


def _size(f: FileEntry) -> int:
    return f.size


def _group_size(g: Group) -> int:
    return g.size


def _first_path(g: Group) -> bytes:
    return g.files[0].path


def sort_groups(groups: list[Group]) -> list[Group]:
    """In place, by (size, first path): the report's order. Sorted by size first (the key is
    the existing int), then each run of one size by path: a key tuple and a joined path per
    group at once cost ~6 MiB at 200k tiny files, the peak of the scan."""
    groups.sort(key=_group_size)
    i, n = 0, len(groups)
    while i < n:
        j = i + 1
        size = groups[i].size
        while j < n and groups[j].size == size:
            j += 1
        if j - i > 1:
            groups[i:j] = sorted(groups[i:j], key=_first_path)
        i = j
    return groups


def size_groups(files: Iterable[FileEntry], *, in_place: bool = False) -> list[Group]:
    """Stage 0: files of a unique size cannot have a duplicate.

    By a stable sort on size (members keep their walk order) and runs of equal sizes: no list
    per distinct size (a dict of them cost ~6 MiB at 200k tiny files). `in_place` sorts the
    caller's list itself instead of a copy."""
    if in_place and isinstance(files, list):
        ordered = files
        ordered.sort(key=_size)
    else:
        ordered = sorted(files, key=_size)
    out = []
    n = len(ordered)
    i = 0
    while i < n:
        size = ordered[i].size
        j = i + 1
        while j < n and ordered[j].size == size:
            j += 1
        if j - i > 1:
            out.append(Group(size, ordered[i:j]))
        i = j
    return out


def _refine(
    groups: list[Group],
    ctx: ScanContext,
    cache_field: str,
    compute: Callable[[FileEntry], bytes],
    combine: Callable[[Group, bytes], bytes | None],
) -> list[Group]:
    """Split every group by a per-file digest (cached when possible); `combine` gives the
    new group's content digest from the old group and the digest it was split by."""
    cache = ctx.cache

    def key_of(item: tuple[int, FileEntry]) -> tuple[bytes, bool]:
        entry = item[1]
        digest = compute(entry)
        if cache is not None:
            cache.update(entry, **{cache_field: digest})
        return digest, False

    items = [(gi, f) for gi, g in enumerate(groups) for f in g.files]
    split: dict[tuple[int, bytes], list[FileEntry]] = {}
    stats = ctx.stages[-1]
    if cache is not None:
        # Cached digests first, in one pass in walk order (which keeps each group's members
        # in their order): only the misses go to the readers, in read order.
        cached = cache.get_many([f for _, f in items], cache_field)
        misses = []
        for (gi, entry), digest in zip(items, cached, strict=True):
            if digest is None:
                misses.append((gi, entry))
            else:
                split.setdefault((gi, digest), []).append(entry)
        stats.cache_hits += len(items) - len(misses)
        ctx.progress.advance(len(items) - len(misses))
        items = misses
    items = ctx.ordered(items)
    for (gi, entry), result, exc in ctx.map(key_of, items, _second):
        ctx.progress.advance()
        if exc is not None or result is None:
            if isinstance(exc, OSError):
                ctx.report_error(entry, exc)
                continue
            raise exc if exc is not None else RuntimeError("no result")
        digest, hit = result
        stats.cache_hits += hit
        split.setdefault((gi, digest), []).append(entry)
    # Keep the walk's order inside a group whatever order the workers finished in (members
    # that all came from the cache are in that order already).
    position = {id(f): i for g in groups for i, f in enumerate(g.files)} if items else None
    out = []
    for (gi, digest), members in split.items():
        if len(members) > 1:
            if position is not None:
                members.sort(key=lambda f: position[id(f)])
            out.append(Group(groups[gi].size, members, combine(groups[gi], digest)))
    sort_groups(out)
    return out


def _direct(g: Group) -> bool:
    """Small and few: partial digests would cost as many opens as reading the files whole,
    so such a group goes straight to verification, which reads each file once."""
    return g.size <= DIRECT_MAX and len(g.files) <= LOCKSTEP_GROUP


def head_stage(groups: list[Group], ctx: ScanContext) -> list[Group]:
    """Stage 1: digest of the first `partial_size` bytes (all of a file no longer than that)."""
    n, alg = ctx.config.partial_size, ctx.config.algorithm
    direct = [g for g in groups if _direct(g)]
    rest = [g for g in groups if not _direct(g)]
    tails = ctx.tails

    def head(e: FileEntry) -> bytes:
        # A file longer than the head has its tail read too, through the same descriptor: the
        # tail stage then needs no second open, fstat and close (most files that reach the
        # head stage reach the tail stage).
        if e.size <= n:
            return partial_digest(e, ctx.counter, "head", n, alg)
        h, t = head_and_tail_digests(e, ctx.counter, n, alg)
        tails[id(e)] = (e, t)
        return h

    return direct + _refine(rest, ctx, f"head{n}:{alg}", head, lambda g, d: d)


def tail_stage(groups: list[Group], ctx: ScanContext) -> list[Group]:
    """Stage 2: digest of the last `partial_size` bytes (files the head covered pass through).

    For files of at most 2 x partial_size, head and tail digests together identify the content.
    """
    n, alg = ctx.config.partial_size, ctx.config.algorithm
    # A group the head split small enough to go straight to verification keeps no digest:
    # a head digest of a file longer than the head is no content digest (verification hashes
    # the content while it compares, when a cache keeps it; the watcher relies on a group's
    # digest being its content's).
    covered = [
        g if g.size <= n or g.digest is None else Group(g.size, g.files, None)
        for g in groups
        if g.size <= n or _direct(g)
    ]
    rest = [g for g in groups if g.size > n and not _direct(g)]
    tails = ctx.tails

    def tail(e: FileEntry) -> bytes:
        kept = tails.pop(id(e), None)
        if kept is not None and kept[0] is e:
            return kept[1]
        return partial_digest(e, ctx.counter, "tail", n, alg)

    try:
        return covered + _refine(
            rest,
            ctx,
            f"tail{n}:{alg}",
            tail,
            lambda g, d: (g.digest or b"") + d if g.size <= 2 * n else None,
        )
    finally:
        tails.clear()  # those of files the head stage already set apart


def full_stage(groups: list[Group], ctx: ScanContext) -> list[Group]:
    """Stage 3: streaming digest of the whole content, where it pays.

    Groups whose digest already identifies the content (head, or head + tail) pass through.
    So do groups of at most LOCKSTEP_GROUP files: verification reads them in lock-step and
    hashes the bytes as it compares them, so a full hash first would read every byte twice
    for nothing. Larger groups are hashed here (split without holding many files open), and
    so is any group with a cached full digest for some member: only the others are read.
    """
    alg = ctx.config.algorithm
    field_name = f"full:{alg}"
    cache = ctx.cache

    def any_cached(g: Group) -> bool:
        return cache is not None and cache.peek_any(g.files, field_name)

    if cache is not None:
        cache.prefetch(f for g in groups if g.digest is None for f in g.files)
    todo = [g for g in groups if g.digest is None and (len(g.files) > LOCKSTEP_GROUP or any_cached(g))]
    chosen = {id(g) for g in todo}
    passing = [g for g in groups if id(g) not in chosen]
    hashed = _refine(todo, ctx, field_name, lambda e: full_digest(e, ctx.counter, alg), lambda g, d: d)
    return passing + hashed


def verify_stage(groups: list[Group], ctx: ScanContext) -> list[Group]:
    """Stage 4: byte-by-byte comparison; only proven-identical classes are reported.

    Groups without a content digest yet (small groups the full stage passed on) get one here,
    hashed from the very bytes being compared, and it goes to the cache like any full digest.
    """
    alg = ctx.config.algorithm
    full_field = f"full:{alg}"
    trusted = ctx.cache if ctx.config.trust_verified_cache and alg in CRYPTOGRAPHIC else None
    stats = ctx.stages[-1]

    def verify(group: Group) -> tuple[list[Group], int]:
        proven: list[FileEntry] = []
        if trusted is not None and group.digest is not None:
            proven = [f for f in group.files if trusted.get(f, "verified") == group.digest]
        unproven = [f for f in group.files if not any(f is p for p in proven)]
        if not unproven:
            return [group], len(proven)
        # One proven member stands for all of them: they are equal to each other already.
        anchor = proven[:1]
        # Hashed while compared only when a cache keeps the digest for the next scan: the
        # bytes are the proof, and hashing costs as much as reading them from the page cache.
        new_hasher = HASHERS[alg] if group.digest is None and ctx.cache is not None else None
        classes = equal_classes(anchor + unproven, ctx.counter, ctx.report_error, new_hasher)
        order = {id(f): i for i, f in enumerate(group.files)}
        out = []
        for cls, digest in classes:
            if anchor and any(f is anchor[0] for f in cls):
                cls = proven + [f for f in cls if f is not anchor[0]]
            digest = group.digest if group.digest is not None else digest
            if ctx.cache is not None and digest is not None:
                for f in cls:
                    # Singletons keep their new full digest too: the next scan then splits
                    # this group from the cache instead of reading it again.
                    fields = {"verified": digest} if trusted is not None and len(cls) > 1 else {}
                    if group.digest is None:
                        fields[full_field] = digest
                    if fields:
                        ctx.cache.update(f, **fields)
            if len(cls) < 2:
                continue
            cls.sort(key=lambda f: order[id(f)])
            out.append(Group(group.size, cls, digest))
        return out, len(proven)

    out: list[Group] = []
    todo = groups
    if trusted is not None:
        # Groups a previous scan proved whole need no reader thread: settle them here.
        trusted.prefetch(f for g in groups for f in g.files)
        todo = []
        for group in groups:
            if group.digest is not None and all(
                v == group.digest for v in trusted.get_many(group.files, "verified")
            ):
                out.append(group)
                stats.cache_hits += len(group.files)
                ctx.progress.advance(len(group.files))
            else:
                todo.append(group)

    def here(groups: list[Group]) -> None:
        for group, result, exc in ctx.map(verify, groups, _first_file):
            ctx.progress.advance(len(group.files))
            if exc is not None or result is None:
                raise exc if exc is not None else RuntimeError("no result")
            out.extend(result[0])
            stats.cache_hits += result[1]

    def copy_work(groups: list[Group]) -> Found:
        found: Found = []
        for gi, group in enumerate(groups):
            classes, _ = verify(group)
            if classes:
                index = {id(f): k for k, f in enumerate(group.files)}
                found.append((gi, [([index[id(f)] for f in c.files], c.digest) for c in classes]))
        return found

    if ctx.cache is not None or not _forked(list(todo), ctx, copy_work, here, out):
        here(todo)
    sort_groups(out)
    return out


def small_stage(groups: list[Group], ctx: ScanContext) -> list[Group]:
    """Groups of files of at most SMALL_MAX bytes, settled in one read per file.

    Each file is read whole (one open, one fstat, one pread) and its bytes are the dict key
    of its class: equal keys are equal bytes, so a class is proven when it forms, and no file
    is opened twice (a partial hash followed by a byte compare would open each one twice).
    Only one representative's bytes per distinct content of the groups of the current run
    are kept. With a cache, a group whose members all have a cached full digest needs no read
    when the digests tell the classes apart and the members of every class of two or more
    were proven equal before (`verified`); otherwise the whole group is read.

    `groups` is consumed (emptied): each run's input groups are let go once it is read, so
    input and output groups do not both stay alive (~5 MiB at 200k tiny files).
    """
    alg = ctx.config.algorithm
    full_field = f"full:{alg}"
    cache = ctx.cache
    trusted = cache is not None and ctx.config.trust_verified_cache and alg in CRYPTOGRAPHIC
    stats = ctx.stages[-1]
    new_hasher = HASHERS[alg]
    out: list[Group] = []
    todo: list[Group | None] = list(groups)
    groups.clear()
    if cache is not None:
        prefetched = 0
        pending, todo = todo, []
        for i, g in enumerate(pending):
            assert g is not None
            if i == prefetched:  # rows fetched in batches of groups, not one query per group
                run_groups: list[Group] = []
                n = 0
                while prefetched < len(pending) and n < SMALL_RUN:
                    nxt = pending[prefetched]
                    assert nxt is not None
                    run_groups.append(nxt)
                    n += len(nxt.files)
                    prefetched += 1
                cache.prefetch(f for rg in run_groups for f in rg.files)
            digests = cache.get_many(g.files, full_field)
            if any(d is None for d in digests):
                todo.append(g)
                continue
            by_digest: dict[bytes, list[FileEntry]] = {}
            for f, d in zip(g.files, digests, strict=True):
                by_digest.setdefault(d, []).append(f)
            known = [(d, m) for d, m in by_digest.items() if len(m) > 1]
            if trusted and all(all(v == d for v in cache.get_many(m, "verified")) for d, m in known):
                out.extend(Group(g.size, m, d) for d, m in known)
                stats.cache_hits += len(g.files)
                ctx.progress.advance(len(g.files))
                cache.forget(g.files)  # settled: their rows are not needed again
            else:
                todo.append(g)

    def read(item: tuple[int, int, FileEntry]) -> bytes:
        return read_small(item[2], ctx.counter)

    def classes_of(run: list[Group]) -> Iterator[tuple[Group, dict[bytes, list[int]]]]:
        """Read a run of groups: per group, the indices of its files by their bytes (in walk
        order)."""
        flat = [f for grp in run for f in grp.files]
        readers = ctx.readers_for(flat, _itself)
        if readers == 1:
            # One reader (a warm page cache, or --workers 1): one flat loop in the groups' own
            # order (see read_small_many). No inode order here: with nothing to wait for on
            # the device, the order changes nothing but the cost of sorting.
            results = read_small_many(flat, ctx.counter)
            del flat
            at = 0
            for grp in run:
                classes: dict[bytes, list[int]] = {}
                files = grp.files
                for k in range(len(files)):
                    got = results[at + k]
                    if isinstance(got, bytes):
                        members = classes.get(got)
                        if members is None:
                            classes[got] = [k]
                        else:
                            members.append(k)
                    else:
                        ctx.report_error(files[k], got)
                at += len(files)
                yield grp, classes
            ctx.progress.advance(at)
            return
        del flat
        # (group index, index in the group, file): read in read order, bytes put back in place
        items = [(gi, k, f) for gi, grp in enumerate(run) for k, f in enumerate(grp.files)]
        if ctx.config.order == "inode":
            items.sort(key=_inode_order3)
        slots: list[list[bytes | None]] = [[None] * len(grp.files) for grp in run]
        for (gi, k, entry), data, exc in ctx.map_with(read, items, readers):
            ctx.progress.advance()
            if exc is not None or data is None:
                if isinstance(exc, OSError):
                    ctx.report_error(entry, exc)
                    continue
                raise exc if exc is not None else RuntimeError("no result")
            slots[gi][k] = data
        del items
        for grp, datas_of in zip(run, slots, strict=True):
            # bytes -> members, in the group's (walk) order: equal keys are equal bytes
            classes = {}
            for k, content in enumerate(datas_of):
                if content is not None:
                    members = classes.get(content)
                    if members is None:
                        classes[content] = [k]
                    else:
                        members.append(k)
            yield grp, classes

    def settle(run: list[Group]) -> None:
        for grp, classes in classes_of(run):
            files = grp.files
            for data, ks in classes.items():
                if len(ks) < 2 and cache is None:
                    continue
                members = [files[k] for k in ks]
                digest = None  # without a cache to keep it, as in verify: the bytes are the proof
                if cache is not None:
                    hasher = new_hasher()
                    hasher.update(data)
                    digest = hasher.digest()
                    # Singletons keep their digest too: the next scan tells them apart unread.
                    proven = {"verified": digest} if trusted and len(members) > 1 else {}
                    for f in members:
                        cache.update(f, **{full_field: digest}, **proven)
                if len(members) > 1:
                    out.append(Group(grp.size, members, digest))

    def settle_all(todo: list[Group | None]) -> None:
        run: list[Group] = []
        run_files = 0
        run_start = 0
        for i, g in enumerate(todo):
            assert g is not None
            run.append(g)
            run_files += len(g.files)
            if run_files < SMALL_RUN and i + 1 < len(todo):
                continue
            settle(run)
            run, run_files = [], 0
            todo[run_start : i + 1] = [None] * (i + 1 - run_start)  # this run's input goes now
            run_start = i + 1
            if cache is not None:
                cache.flush()  # this run's rows written and forgotten: memory stays one run's worth

    def copy_work(groups: list[Group]) -> Found:
        index = {id(g): gi for gi, g in enumerate(groups)}
        found: Found = []
        run: list[Group] = []
        run_files = 0
        for i, g in enumerate(groups):
            run.append(g)
            run_files += len(g.files)
            if run_files < SMALL_RUN and i + 1 < len(groups):
                continue
            for grp, classes in classes_of(run):
                many: list[tuple[list[int], bytes | None]] = [
                    (ks, None) for ks in classes.values() if len(ks) > 1
                ]
                if many:
                    found.append((index[id(grp)], many))
            run, run_files = [], 0
        return found

    if cache is not None or not _forked(todo, ctx, copy_work, settle_all, out, FORK_SHARE_SMALL):  # type: ignore[arg-type]
        settle_all(todo)
    sort_groups(out)
    return out


# A warm scan of many small files is CPU-bound (four system calls per file and the
# interpreter around them; no read waits on the disk), and one process uses one core. With a
# second core free to this process, a forked copy settles part of the small groups while
# this process settles the rest: only from the CLI's one-shot scans (a process with no other
# thread: forking a threaded server could copy a lock held by another thread), only without
# a hash cache (the copy's rows would be lost), only with adaptive readers and a warm page
# cache (cold, reader threads already overlap the waits), only for this much work or more
# (files, or 64 KiB, each ~10 us warm; a fork and the hand-back cost a few milliseconds).
FORK_MIN_WORK = 4096
# The copy's share of the work (files, or 64 KiB) of the verify groups: there this process
# settled its part in more CPU time than the copy did (20k-file tree, 3 rounds each way).
FORK_SHARE = 0.55
# ... and of the small groups: the copy's part is the larger sizes (the groups go in size
# order), whose reads and class keys cost more a file; at 0.55 the copy spent ~1.25x the CPU
# of this process's part (200k tiny files: 1.12-1.17 s against 0.84-0.99 s), at 0.45 about
# as much (0.94-1.05 s against 0.97-1.05 s). The merge after the join runs in either case.
FORK_SHARE_SMALL = 0.45


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _fork_split(todo: list[Group], ctx: ScanContext, share: float = FORK_SHARE) -> int:
    """Where the groups the copy takes begin (0: no copy; see FORK_MIN_WORK); `share`: the
    copy's part of the work."""
    if ctx.config.workers or not hasattr(os, "fork") or threading.active_count() != 1 or _cores() < 2:
        return 0
    counts = [len(g.files) * (1 + (g.size >> 16)) for g in todo]  # a file, or 64 KiB: alike
    total = sum(counts)
    if total < FORK_MIN_WORK:
        return 0
    # Warm? A few files of the copy's part probed, as the adaptive readers do.
    sample = [g.files[0] for g in todo[len(todo) // 2 :: max(1, len(todo) // 16)]]
    if ctx._workers_for(sample, _itself) != 1:
        return 0
    mine, seen = total * (1 - share), 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= mine:
            return i + 1 if i + 1 < len(counts) else 0
    return 0


def _itself(f: FileEntry) -> FileEntry:
    return f


# Per group handed to the copy: (its index, its classes of two or more files as (indices
# into the group, content digest or None)).
Found = list[tuple[int, list[tuple[list[int], bytes | None]]]]


class _Helper:
    """The forked copy that settles the groups handed to it: `work(groups)` runs there and
    its classes come back as indices into each group, with the copy's errors as (path, text)
    and the bytes it read, marshalled through a pipe; then the copy exits (os._exit: no
    clean-up of the copied interpreter). `join` returns False when the copy failed to
    answer: its groups are then settled by this process."""

    def __init__(self, ctx: ScanContext) -> None:
        self.ctx = ctx
        self.pid = -1
        self.rfd = -1

    def start(self, groups: list[Group], work: Callable[[list[Group]], Found]) -> None:
        ctx = self.ctx
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the copy
            code = 70
            try:
                os.close(rfd)
                ctx.progress = NoProgress()  # the parent's bar is the parent's
                errors_before, read_before = len(ctx.errors), ctx.counter.total
                segments_before, cold_before = ctx.segments, ctx.segments_cold
                found = work(groups)
                payload = marshal.dumps(
                    (
                        found,
                        [(e.path, e.error) for e in ctx.errors[errors_before:]],
                        ctx.counter.total - read_before,
                        ctx.segments - segments_before,
                        ctx.segments_cold - cold_before,
                    )
                )
                view = memoryview(payload)
                while view:
                    view = view[os.write(wfd, view) :]
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        self.pid, self.rfd = pid, rfd

    def abandon(self) -> None:
        """This process failed: the copy is stopped and reaped, its answer left unread."""
        os.close(self.rfd)
        try:
            os.kill(self.pid, 9)  # SIGKILL
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)

    def join(self, groups: list[Group], out: list[Group]) -> bool:
        ctx = self.ctx
        chunks = []
        try:
            while True:
                chunk = os.read(self.rfd, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.rfd)
            _, status = os.waitpid(self.pid, 0)
        if status != 0 or not chunks:
            return False
        found, errors, read, segments, segments_cold = marshal.loads(b"".join(chunks))
        for gi, classes in found:
            g = groups[gi]
            files = g.files
            out.extend(Group(g.size, [files[k] for k in ks], digest) for ks, digest in classes)
        ctx.errors.extend(WalkError(path, text) for path, text in errors)
        ctx.counter.add(read)
        ctx.segments += segments
        ctx.segments_cold += segments_cold
        ctx.progress.advance(sum(len(g.files) for g in groups))
        return True


def _forked(
    groups: list[Group],
    ctx: ScanContext,
    work: Callable[[list[Group]], Found],
    here: Callable[[list[Group]], None],
    out: list[Group],
    share: float = FORK_SHARE,
) -> bool:
    """Settle `groups` in two processes when that pays (_fork_split): the copy runs `work` on
    the second part (`share` of the work), `here` the first part in this process; the copy's
    classes go to `out`. False (nothing done, `groups` untouched) when it does not pay."""
    split = _fork_split(groups, ctx, share)
    if not split:
        return False
    theirs = groups[split:]
    del groups[split:]
    helper = _Helper(ctx)
    helper.start(theirs, work)
    try:
        here(groups)
    except BaseException:
        helper.abandon()
        raise
    if not helper.join(theirs, out):
        here(theirs)  # the copy failed (it reported nothing): settled here instead
    return True


PIPELINE: list[tuple[str, Stage]] = [
    ("head", head_stage),
    ("tail", tail_stage),
    ("full", full_stage),
    ("verify", verify_stage),
]


def find_duplicates(files: Iterable[FileEntry], ctx: ScanContext, *, consume: bool = False) -> list[Group]:
    """Run every stage in order and return proven duplicate groups.

    `consume`: `files` is a list this call may reorder and empty once the sizes are grouped, so
    that files of a unique size are freed before anything is read (the scan's peak memory)."""
    if not (consume and isinstance(files, list)):
        files = list(files)  # a copy of the caller's: emptied below, not theirs
    t0 = time.perf_counter()
    count = len(files)
    groups = size_groups(files, in_place=True)
    files.clear()
    ctx.stages.append(
        StageStats(
            "size",
            groups_in=count,
            files_in=count,
            groups_out=len(groups),
            files_out=sum(len(g.files) for g in groups),
            seconds=time.perf_counter() - t0,
        )
    )
    small = [g for g in groups if g.size <= SMALL_MAX]
    groups = [g for g in groups if g.size > SMALL_MAX]
    settled = _run_stage("small", small_stage, small, ctx)
    for name, stage in PIPELINE:
        groups = _run_stage(name, stage, groups, ctx)
    ctx.progress.close()
    if not settled:
        return groups
    # Both lists come sorted (each stage ends with sort_groups) and every small size is below
    # every other: the concatenation is in the report's order (no second sort: 0.044 s at 200k
    # tiny files).
    settled.extend(groups)
    return settled


def _run_stage(name: str, stage: Stage, groups: list[Group], ctx: ScanContext) -> list[Group]:
    stats = StageStats(name, groups_in=len(groups), files_in=sum(len(g.files) for g in groups))
    ctx.stages.append(stats)
    read_before = ctx.counter.total
    errors_before = len(ctx.errors)
    t0 = time.perf_counter()
    ctx.progress.start(name, stats.files_in)
    groups = stage(groups, ctx)
    stats.seconds = time.perf_counter() - t0
    stats.bytes_read = ctx.counter.total - read_before
    stats.errors = len(ctx.errors) - errors_before
    stats.groups_out = len(groups)
    stats.files_out = sum(len(g.files) for g in groups)
    return groups
