"""Watch mode: `python -m services.dedup watch ROOT...` keeps the duplicate report of its roots
up to date from filesystem change notifications (inotify, through watchfiles/Rust notify).

    arm the watcher ─> full scan: walk.walk(roots)        the index: path -> (dev, ino, mtime, size),
                                                          size -> set of paths, dir -> its files
                                  stages.find_duplicates(every size shared by 2+ paths)
                                                          the scan's pipeline, on index entries
    each change batch ─> lstat only the changed paths     added/modified/deleted files; a directory
                                                          that appears (created, renamed in) is walked,
                                                          one that disappears is dropped; the other
                                                          names of a changed inode (hard links get no
                                                          event of their own) are lstat'ed too
                       ─> stages.find_duplicates(members of the size buckets that changed)
                       ─> the report (same format as `scan`), `--report PATH` replaced atomically

A batch ends once the changes stop for a quiet window measured from the last one seen (2 ms at
first, learned up to --step-ms from bursts it cut short; Batcher), or 1.6 s after its first.

Digests live in the per-root hash cache (hashcache.py), kept open for the whole session and
flushed after each batch: unchanged members of a re-verified bucket are settled from it
without a read. A batch of more than `rescan_over` changes (an inotify queue overflow is
thousands of events; watchfiles does not pass notify's "rescan" flag through) or an event on
a root itself triggers a full re-scan, logged on stderr. Confinement is the scan's: the walk
and every scan run with `confine` set to the roots, so a symlink (followed with -L) that
leads out of them is an error entry, never a reported file.
"""

from __future__ import annotations

import bisect
import dataclasses
import fnmatch
import gc
import itertools
import operator
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from services.dedup.files.scanner import ScanOptions, ScanResult
from services.dedup.files.stages import SEGMENT, Group, ScanContext, StageStats, _first_path, find_duplicates
from services.dedup.files.walk import _O_CLOEXEC, _O_PATH, Confinement, FileEntry, WalkError, WalkStats, walk

if TYPE_CHECKING:
    from services.dedup.files.hashcache import HashCache

# watchfiles' Change values
ADDED, MODIFIED, DELETED = 1, 2, 3
# A batch with more changes than this is handled as a full re-scan (cheaper than per-path
# work by then, and what an overflowed inotify queue looks like).
RESCAN_OVER = 20000
# Once changes come, the batch ends after a quiet window measured from the last change seen:
# QUIET_MIN_MS at first, doubled (up to step_ms) each time changes follow an answer at once.
# The event set is looked at every step_ms while idle, every FINE_STEP_MS in a batch and for a
# while after an answer. No look ever drops a change (Batcher._watch: no watchfiles timeout).
QUIET_MIN_MS = 2
FINE_STEP_MS = 1
HOT_MAX_MS = 100  # looks every FINE_STEP_MS after an answer: for 2 x step_ms, at most this

Stamp = tuple[int, int, int, int, int]  # (dev, ino, mtime_ns, size, ctime_ns)
_SEP_TEXT = ",\n    "  # between two groups in the JSON report (indent 2, in a list)
_SEP = _SEP_TEXT.encode("ascii")
_O_PATH_DIR = _O_PATH | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC


def open_kept_cache(
    cache_dir: str | None, warn: Callable[[str], None], roots: Sequence[bytes]
) -> HashCache | None:
    """scanner.open_cache, with the rows kept in memory between batches (see _kept_cache_class)."""
    if not cache_dir:
        return None
    import sqlite3

    try:
        cache: HashCache = _kept_cache_class()(cache_dir, roots)
    except (ImportError, OSError, sqlite3.Error) as exc:
        warn(f"hash cache unavailable ({exc}); watching without it")
        return None
    return cache


def _kept_cache_class() -> type:
    from services.dedup.files import hashcache

    class KeptCache(hashcache.HashCache):
        """The per-root hash cache of a scan, for a process that stays up: the rows it looked
        up stay in memory (a scan forgets them after each run of groups, and a batch would
        fetch them from SQLite again, one query per file); flush writes the changed rows and
        keeps them. A file that changes is `invalidate`d, so its row is checked again
        against its new (size, mtime, ctime) before any digest of it is trusted."""

        def forget(self, entries: Iterable[FileEntry]) -> None:
            pass

        def known(self, key: tuple[int, int], field: str) -> bytes | None:
            """`field` of the inode's row if it is in memory (checked against the file's
            stamp when it was fetched; changed inodes are invalidated), else None: no query."""
            value = self._work.get(key)
            return None if value is None else value.get(field)

        def invalidate(self, keys: Iterable[tuple[int, int]]) -> None:
            """No row of these inodes is trusted again: not the one in memory, nor the one in
            the file (None = looked up, none valid), whose stamp a write within one timestamp
            tick leaves as it was; a digest computed from now on replaces it."""
            with self._lock:
                for key in keys:
                    self._work[key] = None
                    self._stamp.pop(key, None)
                    self._dirty.discard(key)

        def update(self, entry: FileEntry, **fields: Any) -> None:
            with self._lock:
                value = self._work.get((entry.dev, entry.ino))
                if value is not None and all(value.get(k) == v for k, v in fields.items()):
                    return  # re-read, same digests: nothing to write
            super().update(entry, **fields)

        def flush(self) -> None:
            """The stages flush after each run of groups; a batch persists once, at its end."""

        def close(self) -> None:
            self.persist()
            super().close()

    return KeptCache


def _entry_path(f: FileEntry) -> bytes:
    return f.path


_files_of = operator.attrgetter("files")


def _lone_set(
    by_name: dict[bytes, bytes], by_digest: dict[bytes, set[bytes]], name: bytes, digest: bytes
) -> None:
    old = by_name.get(name)
    if old == digest:
        return
    if old is not None:
        _lone_drop(by_name, by_digest, name)
    by_name[name] = digest
    by_digest.setdefault(digest, set()).add(name)


def _lone_drop(by_name: dict[bytes, bytes], by_digest: dict[bytes, set[bytes]], name: bytes) -> None:
    digest = by_name.pop(name, None)
    if digest is not None:
        names = by_digest[digest]
        names.discard(name)
        if not names:
            del by_digest[digest]


class WatchIndex:
    """The index of the watched roots and their current duplicate groups."""

    def __init__(
        self,
        roots: Sequence[str | bytes | os.PathLike],
        options: ScanOptions,
        log: Callable[[str], None] = lambda _m: None,
        rescan_over: int = RESCAN_OVER,
    ) -> None:
        self.roots = [os.fsencode(os.path.abspath(os.fsencode(r))) for r in roots]
        confine = options.confine or tuple(os.fsdecode(os.path.realpath(r)) for r in self.roots)
        self.options = dataclasses.replace(options, confine=confine)
        self.wopts = self.options.walk_options()
        self.config = self.options.scan_config()  # validates (ValueError) before anything opens
        self.log = log
        self.rescan_over = rescan_over
        self.warnings: list[str] = []
        self.cache = open_kept_cache(self.options.cache_dir, self.warnings.append, self.roots)
        self._exclude = [os.fsencode(g) for g in self.options.exclude]
        self._include = [os.fsencode(g) for g in self.options.include]
        self.files: dict[bytes, Stamp] = {}
        self.by_size: dict[int, set[bytes]] = {}
        self.by_dir: dict[bytes, set[bytes]] = {}
        self.groups: dict[int, list[Group]] = {}
        self.errors: dict[bytes, WalkError] = {}
        self.walk_stats = WalkStats()
        self.stages: list[StageStats] = []
        self.batches = 0
        self._invalidate: set[tuple[int, int]] = set()  # inodes whose cached rows may be stale
        self._changed: set[bytes] = set()  # paths added, changed or removed since the last verify
        # (dev, ino) -> its names in the index: the path itself while it has one (the same
        # bytes object as the key of `files`: no memory of its own), a set from the second.
        self._names: dict[tuple[int, int], bytes | set[bytes]] = {}
        self._multi: set[tuple[int, int]] = set()  # the inodes with 2+ names
        self._linked: list[FileEntry] | None = None  # their entries (None: to redo)
        self._inodes_touched: set[tuple[int, int]] = set()  # this batch: 2+ names, one changed
        self._real_dirs: dict[bytes, bool] = {}  # this batch: directory -> resolves outside
        self.full_scans = 0
        # The answer kept up to date per size (only the sizes a batch re-verified are redone):
        # sizes with groups in order, per size (groups, files, wasted bytes), the totals,
        # and each size's JSON text (made when a JSON report asks).
        self._dirty: set[int] = set()  # sizes whose groups changed since the last result()
        self._sizes: list[int] = []
        self._agg: dict[int, tuple[int, int, int]] = {}
        self._n_files = 0
        self._wasted = 0
        # Each listed size's groups as JSON text, preceded by the separator (_SEP), in the
        # order of _sizes (None: to encode; see json_chunks), and the sizes to encode.
        self._chunks: list[bytes | None] = []
        self._unencoded: set[int] = set()
        self._group_texts: dict[int, dict[int, tuple[Group, str]]] = {}  # size -> id -> text
        self._group_names: dict[int, tuple[Group, frozenset[bytes]]] = {}  # id -> its names
        # With a cache: per size, the names no group holds whose full digest is in memory
        # ("lone": each joins the pipeline only when a changed file has its digest), as the
        # last verify of that size left them: name -> digest, digest -> names. A batch then
        # sets them aside with set operations and looks up only the changed files' digests,
        # instead of a Python loop over every ungrouped name of every size it touches.
        self._lone: dict[int, tuple[dict[bytes, bytes], dict[bytes, set[bytes]]]] = {}

    # -- index maintenance -------------------------------------------------------------
    def _add(self, path: bytes, st: Stamp, force: bool = False) -> set[int]:
        """Index `path`; the sizes whose groups this changes. `force`: a change event came for
        it, so it is re-verified even when its stamp looks the same (a write within one
        timestamp tick leaves mtime as it was)."""
        old = self.files.get(path)
        key = st[:2]
        if force:
            self._invalidate.add(key)
            self._changed.add(path)
        if old == st:
            if force and isinstance(self._names.get(key), set):
                self._inodes_touched.add(key)  # its other names changed with it
            return {st[3]} if force else set()
        touched = self._remove(path)
        self.files[path] = st
        self._changed.add(path)
        names = self._names.get(key)
        if names is None:
            self._names[key] = path
        else:
            # Another name of an indexed inode (a hard link): inotify says nothing of the
            # others (link(2) changed their ctime, a write through this name their content).
            self._inodes_touched.add(key)
            self._linked = None
            if isinstance(names, set):
                names.add(path)
            else:
                self._names[key] = {names, path}
                self._multi.add(key)
        self.by_size.setdefault(st[3], set()).add(path)
        self.by_dir.setdefault(os.path.dirname(path), set()).add(path)
        touched.add(st[3])
        return touched

    def _remove(self, path: bytes) -> set[int]:
        old = self.files.pop(path, None)
        self.errors.pop(path, None)
        if old is None:
            return set()
        self._invalidate.add(old[:2])
        self._changed.add(path)
        key = old[:2]
        names = self._names[key]
        if isinstance(names, set):
            # Its other names stay, with a link count (and ctime) unlink(2) changed silently.
            self._inodes_touched.add(key)
            self._linked = None
            names.discard(path)
            if len(names) == 1:
                self._names[key] = names.pop()
                self._multi.discard(key)
        else:
            del self._names[key]
        bucket = self.by_size.get(old[3])
        if bucket is not None:
            bucket.discard(path)
            if not bucket:
                del self.by_size[old[3]]
        siblings = self.by_dir.get(os.path.dirname(path))
        if siblings is not None:
            siblings.discard(path)
            if not siblings:
                del self.by_dir[os.path.dirname(path)]
        return {old[3]}

    def _remove_tree(self, path: bytes) -> set[int]:
        """Every indexed file at or under `path` (a file, or a directory that went away)."""
        was_file = path in self.files
        touched = self._remove(path)
        if was_file:
            return touched  # a file, not a directory: nothing indexed under it (no scan of by_dir)
        prefix = path.rstrip(b"/") + b"/"
        for d in [d for d in self.by_dir if d == path or d.startswith(prefix)]:
            for f in list(self.by_dir.get(d, ())):
                touched |= self._remove(f)
        for p in [p for p in self.errors if p.startswith(prefix)]:
            del self.errors[p]
        return touched

    def _excluded(self, path: bytes) -> bool:
        """The walk's exclude rule for `path` and each directory above it inside its root."""
        if not self._exclude:
            return False
        root = next((r for r in self.roots if path == r or path.startswith(r.rstrip(b"/") + b"/")), None)
        if root is None:
            return True
        cur = path
        while len(cur) > len(root):
            name = os.path.basename(cur)
            if any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(cur, g) for g in self._exclude):
                return True
            cur = os.path.dirname(cur)
        return False

    def _wanted(self, name: bytes, size: int) -> bool:
        if self._include and not any(fnmatch.fnmatchcase(name, g) for g in self._include):
            return False
        o = self.options
        return size >= o.min_size and (o.max_size is None or size <= o.max_size)

    def _walk_into(self, roots: list[bytes]) -> set[int]:
        """Walk `roots` (the watch roots or subtrees of them) into the index."""
        walked = walk(roots, self.wopts)
        touched: set[int] = set()
        for f in walked.files:
            stamp = (f.dev, f.ino, f.mtime_ns, f.size, f.ctime_ns)
            for p in (f.path, *f.links):
                touched |= self._add(p, stamp)
        for e in walked.errors:
            self.errors[e.path] = e
        return touched

    # -- scans ------------------------------------------------------------------------
    def full_scan(self) -> None:
        """Forget everything, walk the roots, verify every size shared by two paths."""
        t0 = time.perf_counter()
        self.files.clear()
        self._names.clear()
        self._multi.clear()
        self._linked = None
        self.by_size.clear()
        self.by_dir.clear()
        self.groups.clear()
        self.errors.clear()
        self._dirty.clear()
        self._sizes.clear()
        self._agg.clear()
        self._chunks.clear()
        self._unencoded.clear()
        self._group_texts.clear()
        self._group_names.clear()
        self._lone.clear()
        self._n_files = self._wasted = 0
        walked = walk(self.roots, self.wopts)
        self.walk_stats = walked.stats
        for f in walked.files:
            stamp = (f.dev, f.ino, f.mtime_ns, f.size, f.ctime_ns)
            for p in (f.path, *f.links):
                self._add(p, stamp)
        for e in walked.errors:
            self.errors[e.path] = e
        self.full_scans += 1
        self._verify(set(self.by_size))
        self.flush_cache()
        self.last_seconds = time.perf_counter() - t0

    def _verify(self, sizes: Iterable[int], batch: bool = False) -> int:
        """Re-verify the groups of these sizes through the scan pipeline; returns files scanned.

        Members of a group of the last answer whose names all kept their stamps stay proven:
        one of them (the representative) goes through the pipeline with the bucket's changed
        and ungrouped files, and the others follow it into whatever group it lands in.
        """
        changed = self._changed
        self._changed = set()
        paths: list[bytes] = []
        reps: list[FileEntry] = []
        followers: dict[int, list[FileEntry]] = {}  # id(representative) -> the others
        kept: list[Group] = []  # groups whose representative the pipeline must place
        previous: dict[int, Group] = {}  # id(first member) -> its group in the last answer
        # Groups no change touched whose digest is their content's full digest: one joins the
        # pipeline only when a changed file has that (size, digest) (see _candidates), else
        # it stays as it is, unread and not looked up in the cache.
        intact: list[Group] = []
        names_of = self._group_names
        full = self.cache is not None
        lone_recs = self._lone
        held: list[tuple[int, dict[bytes, bytes], dict[bytes, set[bytes]]]] = []  # (size, lone)
        partial = self.config.partial_size
        for size in sizes:
            self._dirty.add(size)
            old = self.groups.pop(size, [])
            previous.update((id(g.files[0]), g) for g in old)
            bucket = self.by_size.get(size)
            if bucket is None or len(bucket) < 2:
                lone_recs.pop(size, None)
                continue
            covered: set[bytes] = set()
            for g in old:
                # Every name of the group, kept while the group object lives (a group no
                # change touches is checked in one set operation, not name by name).
                hit = names_of.pop(id(g), None)
                if hit is not None and hit[0] is g:
                    names = hit[1]
                else:
                    names = frozenset(p for f in g.files for p in (f.path, *f.links))
                # (a name no longer indexed was removed, so it is in `changed` too)
                if changed.isdisjoint(names):
                    survivors = g.files
                else:
                    survivors = [f for f in g.files if f.path not in changed and changed.isdisjoint(f.links)]
                if not survivors:
                    continue
                if (
                    full
                    and len(survivors) == len(g.files)
                    and g.digest is not None
                    and not partial < size <= 2 * partial  # head + tail digests there, maybe
                ):
                    intact.append(g)
                    names_of[id(g)] = (g, names)
                    covered |= names
                    continue
                reps.append(survivors[0])
                followers[id(survivors[0])] = survivors[1:]
                kept.append(g if len(survivors) == len(g.files) else Group(g.size, survivors, g.digest))
                covered.update(p for f in survivors for p in (f.path, *f.links))
            rest = bucket - covered if covered else set(bucket)  # set operations: no Python loop
            rec = lone_recs.get(size) if full else None
            if rec is not None:
                by_name, by_digest = rec
                for p in by_name.keys() & changed:  # changed names: their rows were invalidated
                    _lone_drop(by_name, by_digest, p)
                rest.difference_update(by_name)  # set aside, as in the loop below
                held.append((size, by_name, by_digest))
            paths.extend(rest)
        if self._invalidate and self.cache is not None:
            self.cache.invalidate(self._invalidate)  # type: ignore[attr-defined]
        self._invalidate.clear()
        if not paths and not reps and not held:
            for g in intact:
                self.groups.setdefault(g.size, []).append(g)
            self.stages = []
            return 0
        # Entries from the index, one per inode (other names as its links, as the walk gives
        # them): nothing re-stat'ed. The reader checks (dev, ino, size, mtime) after each open,
        # so a file changed since it was indexed is an error entry, never a wrong group.
        fresh: list[FileEntry] = []
        by_inode: dict[tuple[int, int], FileEntry] = {}
        fresh_changed: set[int] = set()  # id() of the fresh entries with a changed name
        # Unchanged ungrouped files whose full digest is in memory (KeptCache.known: no query):
        # an entry only if a changed file has their (size, digest), known once the changed
        # files are hashed (below). Every name of an inode one of whose names changed was
        # invalidated above, so the names of one inode are all set aside or none.
        lone: list[tuple[bytes, int, bytes]] = []
        field = f"full:{self.config.algorithm}"
        files = self.files
        if self.errors:
            for p in paths:
                self.errors.pop(p, None)
        if self.cache is not None:
            # KeptCache.known, inlined (thousands of unchanged paths a batch): the row in
            # memory, no query; a changed inode's row was invalidated to None above.
            work: dict[tuple[int, int], dict[str, bytes] | None] = self.cache._work
            pending = []
            for p in paths:
                if p not in changed:
                    st = files[p]
                    value = work.get(st[:2])
                    digest = None if value is None else value.get(field)
                    if digest is not None:
                        lone.append((p, st[3], digest))
                        continue
                pending.append(p)
            paths = pending
        paths.sort()

        def entry_for(p: bytes) -> FileEntry:
            dev, ino, mtime_ns, size, ctime_ns = self.files[p]
            entry = by_inode.get((dev, ino))
            if entry is None:
                by_inode[(dev, ino)] = entry = FileEntry(p, dev, ino, size, mtime_ns, ctime_ns)
                fresh.append(entry)
            else:
                entry.links = [*entry.links, p]
            return entry

        for p in paths:
            entry = entry_for(p)
            if p in changed:
                fresh_changed.add(id(entry))
        ctx = ScanContext(config=self.config, cache=self.cache)
        wanted = self._changed_digests([f for f in fresh if id(f) in fresh_changed], ctx)
        matched = [p for p, size, digest in lone if (size, digest) in wanted]
        if held:
            wanted_of: dict[int, list[bytes]] = {}
            for size, digest in wanted:
                wanted_of.setdefault(size, []).append(digest)
            for size, _by_name, by_digest in held:
                for digest in wanted_of.get(size, ()):
                    matched.extend(by_digest.get(digest, ()))
        if matched:
            for p in sorted(matched):
                entry_for(p)
            fresh.sort(key=_entry_path)  # paths' order, as if none had been set aside
        entries = self._candidates(reps, fresh, fresh_changed, wanted)
        if batch and not self.config.workers and len(entries) + len(intact) < SEGMENT:
            # A batch's few hundred files were mostly just written or hashed (in the page
            # cache): one reader, without the adaptive probe's opens (8 per map call).
            ctx.config = dataclasses.replace(self.config, workers=1)
        group_digest: dict[int, bytes] = {}  # id() of an intact group's representative -> digest
        for g in intact:
            if (g.size, g.digest) in wanted:  # a changed file may join it: the pipeline decides
                entries.append(g.files[0])
                followers[id(g.files[0])] = g.files[1:]
                kept.append(g)
                group_digest[id(g.files[0])] = g.digest  # type: ignore[assignment]  # intact: set
            else:
                self.groups.setdefault(g.size, []).append(g)
        if full:
            entries = self._without_singletons(entries, group_digest, field)
        placed: set[int] = set()
        grouped: set[int] = set()  # id() of the pipeline's files now in a group
        for g in find_duplicates(entries, ctx):
            members = []
            for f in g.files:
                members.append(f)
                if id(f) in followers:
                    placed.add(id(f))
                    members.extend(followers[id(f)])
            if len(members) > len(g.files):
                members.sort(key=lambda f: f.path)
            grouped.update(id(f) for f in g.files)
            same = previous.get(id(members[0]))
            if same is not None and same.files == members and same.digest == g.digest:
                g = same  # unchanged: the report keeps its encoded text
            else:
                g = Group(g.size, members, g.digest)
            self.groups.setdefault(g.size, []).append(g)
        for g in kept:  # a representative in no group: the others are still equal to each other
            if id(g.files[0]) not in placed and len(g.files) > 1:
                self.groups.setdefault(g.size, []).append(g)
                grouped.add(id(g.files[0]))
        if full:
            self._update_lone(lone, fresh + reps, grouped, field)
        for e in ctx.errors:
            self.errors[e.path] = e
        self.stages = ctx.stages
        return len(entries)

    def _without_singletons(
        self, entries: list[FileEntry], group_digest: dict[int, bytes], field: str
    ) -> list[FileEntry]:
        """The entries less those whose full digest (in memory: a changed file's was just
        computed, an unchanged one's checked against its stamp when fetched) no other entry
        of its size has, where every entry of that size has one: such a file can be in no
        group (different digests, different bytes), so the pipeline need not read it. An
        edited file and its old group's representative mostly end here, unread. Digests only
        split, as the pipeline's own full stage does; files are joined on their bytes only."""
        work: dict[tuple[int, int], dict[str, bytes] | None] = self.cache._work  # type: ignore[union-attr]
        digests: list[bytes | None] = []
        count: dict[tuple[int, bytes], int] = {}
        unknown: set[int] = set()  # sizes with an entry of no known digest: the pipeline decides
        for f in entries:
            digest = group_digest.get(id(f))
            if digest is None:
                value = work.get((f.dev, f.ino))
                digest = None if value is None else value.get(field)
            digests.append(digest)
            if digest is None:
                unknown.add(f.size)
            else:
                key = (f.size, digest)
                count[key] = count.get(key, 0) + 1
        return [
            f
            for f, digest in zip(entries, digests, strict=True)
            if digest is None or f.size in unknown or count[(f.size, digest)] > 1
        ]

    def _update_lone(
        self, lone: list[tuple[bytes, int, bytes]], seen: list[FileEntry], grouped: set[int], field: str
    ) -> None:
        """Bring the lone records up to date after a verify: the names the loop classified
        lone (and no changed file matched) join their size's record; every name of an entry
        the pipeline saw (or `_candidates` left out) joins it when its inode is in no group
        and has a full digest in memory, else leaves it. A record may miss lone names (they
        take the loop), never hold a name that is grouped, changed or without that digest."""
        recs = self._lone
        for p, size, digest in lone:
            rec = recs.get(size)
            if rec is None:
                rec = recs[size] = ({}, {})
            _lone_set(rec[0], rec[1], p, digest)
        work: dict[tuple[int, int], dict[str, bytes] | None] = self.cache._work  # type: ignore[union-attr]
        for f in seen:
            rec = recs.get(f.size)
            if rec is None:
                rec = recs[f.size] = ({}, {})
            value = work.get((f.dev, f.ino))
            known = None if value is None or id(f) in grouped else value.get(field)
            for p in (f.path, *f.links):
                if known is None:
                    _lone_drop(rec[0], rec[1], p)
                else:
                    _lone_set(rec[0], rec[1], p, known)

    def _changed_digests(self, changed_entries: list[FileEntry], ctx: ScanContext) -> set[tuple[int, bytes]]:
        """The (size, full digest) of the changed files: their digests go to the cache first
        (one read each, which the pipeline then uses). Empty without a cache."""
        cache = self.cache
        wanted: set[tuple[int, bytes]] = set()
        if cache is None:
            return wanted
        from services.dedup.files.reader import full_digest

        field = f"full:{self.config.algorithm}"
        cache.prefetch(changed_entries)  # one query for the rows not in memory, not one each
        for f in changed_entries:
            digest = cache.peek(f, field)
            if digest is None:
                try:
                    digest = full_digest(f, ctx.counter, self.config.algorithm)
                except OSError:
                    continue  # the pipeline meets the same error and reports it
                cache.update(f, **{field: digest})
            wanted.add((f.size, digest))
        return wanted

    def _candidates(
        self,
        reps: list[FileEntry],
        fresh: list[FileEntry],
        changed: set[int],
        wanted: set[tuple[int, bytes]],
    ) -> list[FileEntry]:
        """What the pipeline must see. Unchanged files (representatives, ungrouped files) whose
        full digest the cache holds can join a group only with a changed file of that digest
        (`wanted`, see _changed_digests): an unchanged file no changed file matches stays out."""
        cache = self.cache
        if cache is None:
            return reps + fresh
        field = f"full:{self.config.algorithm}"
        out = [f for f in fresh if id(f) in changed]
        unchanged = reps + [f for f in fresh if id(f) not in changed]
        for f, digest in zip(unchanged, cache.get_many(unchanged, field), strict=True):
            if digest is None or (f.size, digest) in wanted:
                out.append(f)
        return out

    def flush_cache(self) -> None:
        """Write the digests this batch found (one transaction)."""
        if self.cache is not None:
            self.cache.persist()

    def apply(self, changes: Iterable[tuple[int, str]], *, persist: bool = True) -> dict[str, Any]:
        """One batch of changes; returns what it did (for the log). `persist=False`: the new
        digests are written by the caller's flush_cache (after the report, which waits less)."""
        t0 = time.perf_counter()
        changes = list(changes)
        self.batches += 1
        self._real_dirs.clear()
        touched: set[int] = set()
        rescan = ""
        if len(changes) > self.rescan_over:
            rescan = f"{len(changes)} changes in one batch (more than {self.rescan_over})"
        else:
            rootset = set(self.roots)
            for kind, path_s in changes:
                if os.fsencode(path_s) in rootset and kind != MODIFIED:
                    rescan = f"a root changed ({path_s})"
                    break
        subtrees = 0
        if rescan:
            self.log(f"full re-scan #{self.full_scans}: {rescan}")  # the first scan is not counted
            self.full_scan()
        else:
            # Each path is looked at once, as it is now (a path deleted and re-created in one
            # batch is simply there).
            added = {os.fsencode(p) for k, p in changes if k == ADDED}
            looked = {os.fsencode(p) for _k, p in changes}
            self._inodes_touched.clear()
            for path in sorted(looked):
                t, walked = self._look(path, path in added)
                touched |= t
                subtrees += walked
            # Hard links: an event comes for the name a change went through only (link(2),
            # unlink(2) and a write give none for the inode's other names, and IN_ATTRIB on a
            # link count goes to the inode's own watches, not to its directory's). Every other
            # indexed name of an inode whose names or stamp changed is looked at too.
            # A name looked at may now be another inode's (replaced), whose names follow: each
            # round looks at names not looked at yet, so the rounds end.
            for _round in range(len(self.files) + 2):
                more: set[bytes] = set()
                for key in self._inodes_touched:
                    names = self._names.get(key)
                    if isinstance(names, set):
                        more.update(n for n in names if n not in looked)
                    elif names is not None and names not in looked:
                        more.add(names)
                self._inodes_touched.clear()
                if not more:
                    break
                looked |= more
                for path in sorted(more):
                    t, walked = self._look(path, False)
                    touched |= t
                    subtrees += walked
        verified = 0 if rescan else self._verify(touched, batch=True)
        if persist:
            self.flush_cache()
        return {
            "changes": len(changes),
            "full_rescan": bool(rescan),
            "subtrees": subtrees,
            "sizes": len(touched),
            "files_verified": verified,
            "seconds": time.perf_counter() - t0,
        }

    def _look(self, path: bytes, added: bool) -> tuple[set[int], int]:
        """Index `path` as it is now; the sizes this touches and the subtrees walked (0/1)."""
        touched: set[int] = set()
        if self._excluded(path):
            return touched, 0
        try:
            st = os.lstat(path)
        except OSError:
            return self._remove_tree(path), 0
        mode = st.st_mode
        if stat.S_ISLNK(mode) and self.options.follow_symlinks:
            touched |= self._remove_tree(path)
            touched |= self._walk_into([path])  # confined: a link out is an error entry
            return touched, 1
        if stat.S_ISREG(mode):
            if self.options.one_file_system and not any(
                os.lstat(r).st_dev == st.st_dev for r in self.roots if self._under(path, r)
            ):
                return self._remove(path), 0
            if self._escapes(path):
                touched = self._remove(path)
                self.errors[path] = WalkError(path, "outside the allowed scan roots; skipped")
                return touched, 0
            if self._wanted(os.path.basename(path), st.st_size):
                stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)
                return self._add(path, stamp, True), 0
            return self._remove(path), 0
        if stat.S_ISDIR(mode):
            # A directory created or renamed in: its files may have come without events.
            if added:
                self.log(f"re-scanning subtree {os.fsdecode(path)}")
                touched |= self._remove_tree(path)
                touched |= self._walk_into([path])
                return touched, 1
            return touched, 0
        return self._remove_tree(path), 0  # symlink (not followed), FIFO, socket...

    def _escapes(self, path: bytes) -> bool:
        """Whether the directory of `path` resolves outside the roots (a symlink above it)."""
        directory = os.path.dirname(path)
        out = self._real_dirs.get(directory)
        if out is None:
            # Resolved by the kernel (open O_PATH, readlink of /proc/self/fd: 3 system calls)
            # rather than os.path.realpath (an lstat and Python per component: ~20 us a
            # directory, ~130 directories in a batch of 199 changes on the 20k tree).
            try:
                fd = os.open(directory, _O_PATH_DIR)
            except OSError:
                real = os.path.realpath(directory)
            else:
                try:
                    real = Confinement.resolved(fd, directory)
                finally:
                    os.close(fd)
            out = not any(self._under(real, os.fsencode(r)) for r in self.options.confine)
            self._real_dirs[directory] = out
        return out

    @staticmethod
    def _under(path: bytes, root: bytes) -> bool:
        return path == root or path.startswith(root.rstrip(b"/") + b"/")

    # -- output -----------------------------------------------------------------------
    def _refresh(self) -> None:
        """Bring the kept order, sums and texts up to date for the sizes changed since."""
        dirty, self._dirty = self._dirty, set()
        for size in dirty:
            old = self._agg.pop(size, None)
            if old is not None:
                self._n_files -= old[1]
                self._wasted -= old[2]
            gs = self.groups.get(size)
            i = bisect.bisect_left(self._sizes, size)
            listed = i < len(self._sizes) and self._sizes[i] == size
            if not gs:
                if listed:
                    del self._sizes[i]
                    del self._chunks[i]
                self._group_texts.pop(size, None)
                self._unencoded.discard(size)
                continue
            if not listed:
                self._sizes.insert(i, size)
                self._chunks.insert(i, None)
            else:
                self._chunks[i] = None
            self._unencoded.add(size)
            gs.sort(key=_first_path)  # the report's order: (size, first path), see sort_groups
            n_files = sum(map(len, map(_files_of, gs)))
            wasted = size * (n_files - len(gs))  # the sum of Group.wasted_bytes, in one step
            self._agg[size] = (len(gs), n_files, wasted)
            self._n_files += n_files
            self._wasted += wasted

    def hard_linked(self) -> list[FileEntry]:
        """Every indexed inode with two or more names, grouped or not (as a scan reports them),
        by its first name; kept until a name of one is added or removed."""
        if self._linked is None:
            linked = []
            for key in self._multi:
                names = self._names[key]
                assert isinstance(names, set)
                first, *others = sorted(names)
                dev, ino, mtime_ns, size, ctime_ns = self.files[first]
                linked.append(FileEntry(first, dev, ino, size, mtime_ns, ctime_ns, others))
            linked.sort(key=_entry_path)
            self._linked = linked
        return self._linked

    def json_chunks(self) -> list[bytes]:
        """The JSON text of the groups (as report.write_json writes them; ASCII: strings are
        escaped), one chunk per size in order, each preceded by the separator (_SEP); only
        the sizes changed since are encoded again (found by bisection: no loop over the
        sizes). The list is the index's own: not to be changed by the caller."""
        from services.dedup.files import report
        from services.dedup.files.indented_json import encode_at

        self._refresh()
        sizes, chunks = self._sizes, self._chunks
        for size in self._unencoded:
            # Groups a batch left as they were (the same objects) keep their text.
            before = self._group_texts.get(size, {})
            now: dict[int, tuple[Group, str]] = {}
            parts = []
            for g in self.groups[size]:
                hit = before.get(id(g))
                if hit is not None and hit[0] is g:
                    t = hit[1]
                else:
                    t = report._group_text(g) or encode_at(report._group_json(g), 2)
                now[id(g)] = (g, t)
                parts.append(t)
            self._group_texts[size] = now
            chunks[bisect.bisect_left(sizes, size)] = (_SEP_TEXT + _SEP_TEXT.join(parts)).encode("ascii")
        self._unencoded.clear()
        return chunks  # type: ignore[return-value]  # every entry encoded now

    def result(self, seconds: float) -> ScanResult:
        """The answer now: kept per size, so a batch costs in proportion to what it changed
        (the groups' order, totals and hard-linked list are not recomputed over the tree)."""
        self._refresh()
        groups = list(itertools.chain.from_iterable(map(self.groups.__getitem__, self._sizes)))
        hard_linked = self.hard_linked()
        return ScanResult(
            groups=groups,
            hard_linked=hard_linked,
            errors=sorted(self.errors.values(), key=lambda e: e.path),
            walk_stats=self.walk_stats,
            stages=self.stages,
            config=self.config,
            seconds=seconds,
            files_scanned=len(self._names),
            warnings=list(self.warnings) + (list(self.cache.warnings) if self.cache is not None else []),
            extra={"watch_index": self},
            known_wasted_bytes=self._wasted,
            known_duplicate_files=self._n_files,
        )

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
            self.cache = None


class JsonReport:
    """report.write_json's text. For a watcher's answer the groups' text is kept per size by
    the index (json_chunks: a batch encodes only the sizes it re-verified) and written as
    bytes with writev, not joined; otherwise each group's encoding is kept while the group
    lives. test_watch checks the text is the scan's."""

    def __init__(self) -> None:
        self._texts: dict[int, tuple[Group, str]] = {}

    def _parts(self, result: ScanResult) -> list[bytes]:
        """The report as ASCII byte strings, in order."""
        import json

        from services.dedup.files import report
        from services.dedup.files.indented_json import encode_at

        index = result.extra.get("watch_index")
        chunks: list[bytes]
        if isinstance(index, WatchIndex) and not index._dirty:
            chunks = index.json_chunks()  # this very answer's groups, kept per size
        else:
            texts = {}
            for g in result.groups:
                known = self._texts.get(id(g))
                if known is None or known[0] is not g:
                    known = (g, encode_at(report._group_json(g), 2))
                texts[id(g)] = known
            self._texts = texts  # groups gone are dropped (their ids may be reused)
            chunks = [(_SEP_TEXT + texts[id(g)][1]).encode("ascii") for g in result.groups]
        head = report.to_dict(result, groups=False)
        parts = [b"{"]
        for i, (key, value) in enumerate(head.items()):
            parts.append((("\n  " if i == 0 else ",\n  ") + json.dumps(key) + ": ").encode("ascii"))
            if key != "groups" or not result.groups:
                parts.append(encode_at(value, 1).encode("ascii"))
                continue
            parts.append(b"[\n    ")
            parts.append(chunks[0][len(_SEP) :])  # every chunk starts with the separator
            parts.extend(itertools.islice(chunks, 1, None))
            parts.append(b"\n  ]")
        parts.append(b"\n}\n")
        return parts

    def write(self, result: ScanResult, out: TextIO) -> None:
        out.write(b"".join(self._parts(result)).decode("ascii"))

    def write_fd(self, result: ScanResult, fd: int) -> None:
        """To a file descriptor, the parts as they are (writev, IOV_MAX at a time)."""
        parts = self._parts(result)
        step = min(1024, os.sysconf("SC_IOV_MAX")) if hasattr(os, "sysconf") else 1024
        for start in range(0, len(parts), step):
            batch = parts[start : start + step]
            want = sum(len(p) for p in batch)
            done = os.writev(fd, batch)
            if done < want:  # a short write (a full disk reports an error instead): the rest
                rest = b"".join(batch)[done:]
                while rest:
                    rest = rest[os.write(fd, rest) :]


def write_report(
    result: ScanResult,
    fmt: str,
    path: str | None,
    stream: TextIO | None = None,
    json_report: JsonReport | None = None,
    keep_old: list[int] | None = None,
) -> None:
    """The scan's report format; to `path` replaced atomically (temp file + rename), else `stream`.

    `keep_old`: the report being replaced is opened first and its descriptor appended here,
    so the rename does not free its pages (a few MB: ~4 ms of a batch's answer on the 20k
    tree); the caller closes it once the answer is out."""
    from services.dedup.files import report

    writer = {"json": report.write_json, "csv": report.write_csv, "table": report.write_table}[fmt]
    if fmt == "json" and json_report is not None:
        writer = json_report.write
    if path is None:
        out = stream or sys.stdout
        writer(result, out)
        out.flush()
        return
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".dedup-report-", dir=directory)
    try:
        if fmt == "json" and json_report is not None:
            try:
                json_report.write_fd(result, fd)
            finally:
                os.close(fd)
        else:
            with open(fd, "w", encoding="utf-8", errors="surrogateescape", newline="") as out:
                writer(result, out)
        if keep_old is not None:
            try:
                keep_old.append(os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
            except OSError:
                pass  # no report yet (or unreadable): nothing to keep
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class _Notify(Protocol):
    def watch(
        self, debounce_ms: int, step_ms: int, timeout_ms: int, stop_event: Any
    ) -> set[tuple[int, str]] | str: ...


class Batcher:
    """When a batch of changes ends: the watcher's loop asks `next(notify, stop)` for the next
    batch and calls `answered()` once its report is out.

    Idle, the event set is looked at every `step_ms` (what RustNotify.watch costs while
    nothing happens: a wake-up a step); the first look that finds changes returns them one
    step later. From then on it is looked at every FINE_STEP_MS, and the batch ends once no
    change has come for a quiet window, measured from the last change seen: the
    learned `floor_ms` (QUIET_MIN_MS at first, never more than `step_ms`); or `debounce_ms`
    after the first change, whatever comes. (A fixed step waited one to two steps after the
    last change: 10-20 ms at 10.)

    For `hot_ms` after an answer (2 x `step_ms`, at most HOT_MAX_MS) the set is looked at
    every FINE_STEP_MS: changes that came while the batch was being answered are taken at
    once, not a step or two later. Changes there mean the window cut a burst short (a
    writer paused longer than the window; on a loaded machine it is descheduled for
    milliseconds): `floor_ms` doubles, up to `step_ms`; an answer no change follows within
    `hot_ms` lets it back down by a fifth. A cut costs time, never a change: the changes of
    the pause stay in RustNotify's set for the next call, and each batch is answered in
    full."""

    def __init__(
        self,
        *,
        step_ms: int,
        debounce_ms: int,
        quiet_min_ms: float = QUIET_MIN_MS,
        hot_ms: float | None = None,
        idle_timeout_ms: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.step_ms = step_ms
        self.debounce_ms = debounce_ms
        self.quiet_min_ms = quiet_min_ms
        self.quiet_max_ms = max(step_ms, quiet_min_ms)
        self.floor_ms = quiet_min_ms
        self.hot_ms = min(2 * step_ms, HOT_MAX_MS) if hot_ms is None else hot_ms
        self.idle_timeout_ms = idle_timeout_ms
        self.clock = clock
        self.hot_until = 0.0
        self.cuts = 0  # batches that came right after an answer (the log says so)

    def answered(self) -> None:
        self.hot_until = self.clock() + self.hot_ms / 1000

    def next(self, notify: _Notify, stop: threading.Event) -> set[tuple[int, str]] | str:
        """The next batch of changes, or "timeout" / "stop" / "signal" as RustNotify.watch says."""
        hot_left = self.hot_until - self.clock()
        if hot_left > 0:
            got = self._watch(notify, FINE_STEP_MS, hot_left, stop)
            self.hot_until = 0.0
            if got == "timeout":  # the last burst had ended: the window may shrink again
                self.floor_ms = max(self.quiet_min_ms, self.floor_ms * 0.8)
            elif isinstance(got, set):
                self.cuts += 1
                self.floor_ms = min(self.quiet_max_ms, self.floor_ms * 2)
        else:
            got = self._watch(notify, self.step_ms, self.idle_timeout_ms / 1000, stop)
        if not isinstance(got, set):
            return got
        changes = set(got)
        first = last = self.clock()
        quiet = self.floor_ms / 1000
        while True:
            now = self.clock()
            left = quiet - (now - last)
            if left <= 0 or now - first >= self.debounce_ms / 1000:
                return changes
            # Looked at every FINE_STEP_MS until the window ends: a change meanwhile joins
            # the batch and the window starts again from it.
            more = self._watch(notify, FINE_STEP_MS, left, stop)
            if more == "timeout":
                return changes
            if not isinstance(more, set):
                return more  # stop or signal: the run ends, the batch with it
            last = self.clock()
            changes |= more

    def _watch(
        self, notify: _Notify, step_ms: int, seconds: float, stop: threading.Event
    ) -> set[tuple[int, str]] | str:
        """RustNotify.watch for at most `seconds`, and nothing lost when that time ends.

        watchfiles 1.2.0's own timeout (src/lib.rs, RustNotify.watch) reads the event set's
        size, lets go of its lock, then clears the set: a change the notify thread adds in
        between is dropped, silently, and the report would miss it until that path changes
        again. So no timeout is passed: the deadline is the stop event's is_set(), which
        raises once it has passed. watch() propagates that before it touches the set, so a
        change that came meanwhile stays there for the next call (tests/services/dedup/
        test_watch_batching.py pins this on the real RustNotify)."""
        deadline = _Deadline(stop, self.clock() + seconds, self.clock)
        try:
            return notify.watch(1, step_ms, 0, deadline)
        except _WindowEnded:
            return "timeout"


class _WindowEnded(Exception):
    """Raised through RustNotify.watch by _Deadline.is_set once its time is up."""


class _Deadline:
    """RustNotify.watch's stop_event: set when the run's stop event is; past `until` it
    raises _WindowEnded (see Batcher._watch for why a timeout is not used)."""

    __slots__ = ("clock", "stop", "until")

    def __init__(self, stop: threading.Event, until: float, clock: Callable[[], float]) -> None:
        self.stop, self.until, self.clock = stop, until, clock

    def is_set(self) -> bool:
        if self.stop.is_set():
            return True  # the run ends: watch() clears the set, which no longer matters
        if self.clock() >= self.until:
            raise _WindowEnded
        return False


def run_watch(
    roots: Sequence[str],
    options: ScanOptions,
    *,
    fmt: str = "json",
    report_path: str | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = lambda m: print(f"watch: {m}", file=sys.stderr, flush=True),
    step_ms: int = 50,
    debounce_ms: int = 1600,
    rescan_over: int = RESCAN_OVER,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
    stream: TextIO | None = None,
) -> int:
    """Arm the watcher, scan once, then update the report after each change batch until `stop`
    is set (or SIGINT/SIGTERM in the CLI, which sets it). Returns 0."""
    from watchfiles._rust_notify import RustNotify, WatchfilesRustInternalError  # watchfiles.watch()'s

    def _arm() -> RustNotify:
        return RustNotify([os.fsdecode(r) for r in roots], False, False, 300, True, True)

    stop = stop or threading.Event()
    # Armed before the first scan: a change made while it runs comes in the first batch.
    notify = _arm()
    batcher = Batcher(step_ms=step_ms, debounce_ms=debounce_ms)
    index = WatchIndex(roots, options, log=log, rescan_over=rescan_over)
    json_report = JsonReport()
    try:
        index.full_scan()
        # The index lives as long as the process: out of the cyclic collector's way (its
        # passes over ~20k entries would otherwise land in the middle of batches).
        gc.collect()
        gc.freeze()
        res = index.result(index.last_seconds)
        for w in res.warnings:
            log(f"warning: {w}")
        write_report(res, fmt, report_path, stream, json_report)
        log(
            f"first scan: {res.files_scanned} files, {len(res.groups)} groups in "
            f"{index.last_seconds:.3f}s; watching"
        )
        while not stop.is_set():
            try:
                got = batcher.next(notify, stop)
            except WatchfilesRustInternalError as exc:
                # watchfiles 1.2.0 cannot hand over a path that is not UTF-8 (an event for
                # one, a read included, fails the whole batch, and every batch after it):
                # arm a fresh watcher, then re-scan everything (warm from the hash cache).
                log(f"notifications lost ({exc}); full re-scan")
                notify.close()
                notify = _arm()
                t0 = time.perf_counter()
                index.full_scan()
                write_report(index.result(time.perf_counter() - t0), fmt, report_path, stream, json_report)
                continue
            if got in ("stop", "signal"):
                break
            if got == "timeout":
                continue
            assert isinstance(got, set)
            started_at = time.monotonic()
            t0, c0 = time.perf_counter(), time.thread_time()
            info = index.apply(got, persist=False)
            res = index.result(info["seconds"])
            old_reports: list[int] = []
            write_report(res, fmt, report_path, stream, json_report, old_reports)
            info["seconds_with_report"] = time.perf_counter() - t0
            info["cpu_seconds_with_report"] = time.thread_time() - c0
            info["started_at"], info["answered_at"] = started_at, time.monotonic()
            try:
                log(
                    f"batch {index.batches}: {info['changes']} changes, {info['sizes']} sizes,"
                    f" {info['files_verified']} files verified"
                    f"{', full re-scan' if info['full_rescan'] else ''}; {len(res.groups)} groups"
                    f" ({info['seconds_with_report'] * 1000:.1f} ms with the report,"
                    f" {info['cpu_seconds_with_report'] * 1000:.1f} ms CPU);"
                    f" quiet window {batcher.floor_ms:.1f} ms, {batcher.cuts} bursts cut so far;"
                    f" monotonic {started_at:.6f}-{info['answered_at']:.6f} s"  # for benchmarks
                )
                index.flush_cache()  # the batch's digests, once the answer is out
            finally:
                for fd in old_reports:
                    os.close(fd)  # the replaced report's pages are freed now
            batcher.answered()
            if on_batch is not None:
                on_batch(info)
    finally:
        index.close()
        notify.close()
    return 0
