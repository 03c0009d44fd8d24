"""Traversal: one metadata pass over the roots, O(files + dirs), never fatal.

Paths are bytes from start to end so that names which are not valid UTF-8 survive
unchanged; they are decoded (with surrogateescape) only when shown to a person.

Invariants:
- every regular file is reported once per (device, inode); further names of the same inode
  are kept as `links` of that entry, so hard links count once and are reported as already
  linked, never as duplicates of themselves;
- a directory is entered at most once per (device, inode), so following symlinks cannot loop;
- any OSError (permission, vanished, not a directory...) becomes a `WalkError` for that path
  and the walk goes on.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

_S_IFMT, _S_IFDIR, _S_IFREG = 0o170000, stat.S_IFDIR, stat.S_IFREG


@dataclass(slots=True)
class FileEntry:
    """One inode found by the walk; `path` is the first name met, `links` the others."""

    path: bytes
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    links: list[bytes] = field(default_factory=list)

    @property
    def key(self) -> tuple[int, int]:
        return (self.dev, self.ino)

    @property
    def display(self) -> str:
        return os.fsdecode(self.path)


@dataclass(frozen=True, slots=True)
class WalkError:
    path: bytes
    error: str

    @property
    def display(self) -> str:
        return os.fsdecode(self.path)


@dataclass(frozen=True, slots=True)
class WalkOptions:
    follow_symlinks: bool = False
    one_filesystem: bool = False
    min_size: int = 1  # empty files are equal to each other but never worth reporting by default
    max_size: int | None = None
    include: tuple[str, ...] = ()  # globs on the base name; empty = everything
    exclude: tuple[str, ...] = ()  # globs on the base name or the whole path


@dataclass(slots=True)
class WalkStats:
    dirs: int = 0
    files_seen: int = 0
    files_kept: int = 0
    hard_links: int = 0
    symlinks_skipped: int = 0
    special_skipped: int = 0
    filtered: int = 0
    errors: int = 0


@dataclass(slots=True)
class WalkResult:
    files: list[FileEntry]
    errors: list[WalkError]
    stats: WalkStats


def _error_text(exc: OSError) -> str:
    name = type(exc).__name__
    return f"{name}: {exc.strerror or exc}" if exc.strerror else f"{name}: {exc}"


class _Filter:
    def __init__(self, options: WalkOptions) -> None:
        self.options = options
        # Globs are matched on bytes so undecodable names still match '*' patterns.
        self.include = [os.fsencode(p) for p in options.include]
        self.exclude = [os.fsencode(p) for p in options.exclude]

    def excluded(self, path: bytes, name: bytes) -> bool:
        return any(fnmatch.fnmatchcase(name, g) or fnmatch.fnmatchcase(path, g) for g in self.exclude)

    def wanted_file(self, name: bytes, size: int) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(name, g) for g in self.include):
            return False
        if size < self.options.min_size:
            return False
        return self.options.max_size is None or size <= self.options.max_size


def walk(roots: Iterable[str | bytes | os.PathLike], options: WalkOptions | None = None) -> WalkResult:
    """Walk every root and return the regular files, one entry per inode, plus per-path errors."""
    options = options or WalkOptions()
    files: list[FileEntry] = []
    errors: list[WalkError] = []
    stats = WalkStats()
    for entry_or_error in iter_files(roots, options, stats):
        if isinstance(entry_or_error, WalkError):
            errors.append(entry_or_error)
        else:
            files.append(entry_or_error)
    return WalkResult(files=files, errors=errors, stats=stats)


def iter_files(
    roots: Iterable[str | bytes | os.PathLike], options: WalkOptions, stats: WalkStats | None = None
) -> Iterator[FileEntry | WalkError]:
    """Yield FileEntry for each new inode and WalkError for each path that failed.

    Hard links found later are appended to the first entry's `links` (the entry object
    is shared, so a consumer that keeps entries sees every name once the walk ends).
    """
    stats = stats if stats is not None else WalkStats()
    flt = _Filter(options)
    seen_files: dict[tuple[int, int], FileEntry] = {}
    seen_dirs: set[tuple[int, int]] = set()
    stack: list[tuple[bytes, int]] = []  # (directory path, device of its root for --one-filesystem)
    has_exclude = bool(flt.exclude)
    follow, one_fs = options.follow_symlinks, options.one_filesystem
    # Without include globs the filter is the size range: tested inline (see the loop).
    plain = not flt.include
    min_size = options.min_size
    max_size = options.max_size if options.max_size is not None else float("inf")

    for root in roots:
        root_b = os.fsencode(root)
        try:
            # A root named on the command line is followed even when it is a symlink (like find -H).
            st = os.stat(root_b)
        except OSError as exc:
            stats.errors += 1
            yield WalkError(root_b, _error_text(exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) not in seen_dirs:
                seen_dirs.add((st.st_dev, st.st_ino))
                stack.append((root_b, st.st_dev))
        elif stat.S_ISREG(st.st_mode):
            stats.files_seen += 1
            entry = _consider_file(root_b, os.path.basename(root_b), st, flt, seen_files, stats)
            if entry is not None:
                yield entry
        else:
            stats.special_skipped += 1

        while stack:
            dir_path, root_dev = stack.pop()
            stats.dirs += 1
            try:
                with os.scandir(dir_path) as it:
                    entries = list(it)
            except OSError as exc:
                stats.errors += 1
                yield WalkError(dir_path, _error_text(exc))
                continue
            # Sorted so that output and the "first name met" of a hard-linked inode are stable.
            entries.sort(key=lambda e: e.name)
            subdirs: list[tuple[bytes, int]] = []
            # The per-entry loop is the warm re-scan's floor (one lstat per file, nothing
            # read): type tests on st_mode bits and a plain file built inline, no calls.
            for de in entries:
                path = de.path
                if has_exclude and flt.excluded(path, de.name):
                    stats.filtered += 1
                    continue
                try:
                    if de.is_symlink():
                        if not follow:
                            stats.symlinks_skipped += 1
                            continue
                        st = de.stat()
                    else:
                        st = de.stat(follow_symlinks=False)
                except OSError as exc:
                    # A dangling symlink we were asked to follow, or an entry that vanished.
                    stats.errors += 1
                    yield WalkError(path, _error_text(exc))
                    continue
                kind = st.st_mode & _S_IFMT
                if kind == _S_IFREG:
                    if one_fs and st.st_dev != root_dev:
                        stats.filtered += 1
                        continue
                    stats.files_seen += 1
                    key = (st.st_dev, st.st_ino)
                    size = st.st_size
                    if plain and key not in seen_files and min_size <= size <= max_size:
                        entry = FileEntry(path, key[0], key[1], size, st.st_mtime_ns, st.st_ctime_ns, [])
                        seen_files[key] = entry
                        stats.files_kept += 1
                        yield entry
                    else:
                        entry = _consider_file(path, de.name, st, flt, seen_files, stats)
                        if entry is not None:
                            yield entry
                elif kind == _S_IFDIR:
                    if one_fs and st.st_dev != root_dev:
                        stats.filtered += 1
                        continue
                    key = (st.st_dev, st.st_ino)
                    if key in seen_dirs:
                        continue  # symlink cycle or a second route to the same directory
                    seen_dirs.add(key)
                    subdirs.append((path, root_dev))
                else:
                    stats.special_skipped += 1  # FIFOs, sockets, devices: never read
            # Reversed so that popping visits subdirectories in name order (depth first).
            stack.extend(reversed(subdirs))


def _consider_file(
    path: bytes,
    name: bytes,
    st: os.stat_result,
    flt: _Filter,
    seen_files: dict[tuple[int, int], FileEntry],
    stats: WalkStats,
) -> FileEntry | None:
    key = (st.st_dev, st.st_ino)
    known = seen_files.get(key)
    if known is not None:
        if path != known.path and path not in known.links:
            known.links.append(path)
            stats.hard_links += 1
        return None
    if not flt.wanted_file(name, st.st_size):
        stats.filtered += 1
        return None
    entry = FileEntry(
        path=path,
        dev=st.st_dev,
        ino=st.st_ino,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
    )
    seen_files[key] = entry
    stats.files_kept += 1
    return entry
