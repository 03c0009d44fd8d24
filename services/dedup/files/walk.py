"""Traversal: one metadata pass over the roots, O(files + dirs), never fatal.

Paths are bytes from start to end so that names which are not valid UTF-8 survive
unchanged; they are decoded (with surrogateescape) only when shown to a person.

Invariants:
- every regular file is reported once per (device, inode); further names of the same inode
  are kept as `links` of that entry, so hard links count once and are reported as already
  linked, never as duplicates of themselves;
- a directory is entered at most once per (device, inode), so following symlinks cannot loop;
- any OSError (permission, vanished, not a directory...) becomes a `WalkError` for that path
  and the walk goes on;
- with `confine` set (the service's scan jobs), nothing outside those directories is listed or
  reported, whatever symlinks or `..` say: each directory is opened, checked by (device, inode)
  against what the walk decided to enter and by its resolved path (/proc/self/fd) against the
  roots, then listed through that descriptor; a followed symlink is opened (O_PATH, nothing
  read) and its resolved target checked the same way, and one that leads outside becomes a
  `WalkError`. The reader then re-checks (device, inode) after each open, so a path swapped
  for a symlink after the walk cannot make a scan read anything the walk did not admit.
"""

from __future__ import annotations

import errno
import fnmatch
import operator
import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

_S_IFMT, _S_IFDIR, _S_IFREG = 0o170000, stat.S_IFDIR, stat.S_IFREG


_M64 = (1 << 64) - 1
MTIME_BIAS = 1 << 63  # st_mtime_ns is a signed 64-bit count: biased, it packs as unsigned


class FileEntry:
    """One inode found by the walk; `path` is the first name met, `links` the others.

    Memory is the scan's limit at 200k files (the issue's aim: within 2x jdupes'), so:
    the path is the directory's prefix (one bytes object shared by every file of the
    directory) and the name, joined on each use; inode and mtime are one int
    (`ino << 64 | mtime_ns + 2**63`: 36 bytes instead of two ints' 64, and one slot less);
    ctime is None when it equals mtime (a file written once); `links` is a shared empty tuple
    until there is a second name.
    """

    __slots__ = ("_ctime", "_dir", "_im", "_name", "dev", "links", "size")

    def __init__(
        self,
        path: bytes,
        dev: int,
        ino: int,
        size: int,
        mtime_ns: int,
        ctime_ns: int,
        links: Sequence[bytes] = (),
    ) -> None:
        self._dir = b""
        self._name = path
        self.dev = dev
        self._im = (ino << 64) | (mtime_ns + MTIME_BIAS)
        self.size = size
        self._ctime = None if ctime_ns == mtime_ns else ctime_ns
        # Other names of this inode; a shared empty tuple until there is one (an empty list
        # per file cost 56 bytes each: 11 MiB at 200k files).
        self.links: Sequence[bytes] = links

    @property
    def ino(self) -> int:
        return self._im >> 64

    @property
    def mtime_ns(self) -> int:
        return (self._im & _M64) - MTIME_BIAS

    @property
    def ctime_ns(self) -> int:
        c = self._ctime
        return (self._im & _M64) - MTIME_BIAS if c is None else c

    @property
    def path(self) -> bytes:
        return self._dir + self._name if self._dir else self._name

    def _fields(self) -> tuple[Any, ...]:
        return (self.path, self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns, list(self.links))

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, FileEntry)
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable (links), like the dataclass it was

    def __repr__(self) -> str:
        return (
            f"FileEntry(path={self.path!r}, dev={self.dev}, ino={self.ino}, size={self.size}, "
            f"mtime_ns={self.mtime_ns}, ctime_ns={self.ctime_ns}, links={list(self.links)!r})"
        )

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
    confine: tuple[str, ...] = ()  # allowed directories (symlinks resolved); empty = no confinement


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


_name = operator.attrgetter("name")


def _error_text(exc: OSError) -> str:
    name = type(exc).__name__
    return f"{name}: {exc.strerror or exc}" if exc.strerror else f"{name}: {exc}"


_O_PATH = getattr(os, "O_PATH", os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NONBLOCK", 0) | _O_CLOEXEC


class Confinement:
    """The allowed roots, resolved; `resolved(fd)` is where an open descriptor really is."""

    def __init__(self, roots: Iterable[str | bytes]) -> None:
        self.roots = [os.fsencode(os.path.realpath(r)) for r in roots]
        self._prefixes = [r.rstrip(b"/") + b"/" for r in self.roots]

    def contains(self, real: bytes) -> bool:
        return any(real == r or real.startswith(p) for r, p in zip(self.roots, self._prefixes, strict=True))

    @staticmethod
    def resolved(fd: int, path: bytes) -> bytes:
        try:
            return os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:  # no /proc: the path's resolution (racy, but the (dev, ino) checks remain)
            return os.path.realpath(path)

    def open_checked(self, path: bytes, dir_fd: int | None = None) -> tuple[os.stat_result, bytes | None]:
        """Open `path` (following symlinks, reading nothing): its stat, and its resolved path
        when that lies outside the roots (None when inside)."""
        fd = os.open(path, _O_PATH | _O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            real = self.resolved(fd, path)
        finally:
            os.close(fd)
        return st, None if self.contains(real) else real


def _outside(path: bytes, real: bytes) -> WalkError:
    return WalkError(path, f"outside the allowed scan roots (resolves to {os.fsdecode(real)}); skipped")


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
    add_file, add_error = files.append, errors.append
    for entry_or_error in iter_files(roots, options, stats):
        if entry_or_error.__class__ is FileEntry:
            add_file(entry_or_error)
        else:
            add_error(entry_or_error)  # type: ignore[arg-type]
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
    # (directory path, device of its root for --one-filesystem, its (device, inode))
    stack: list[tuple[bytes, int, tuple[int, int]]] = []
    has_exclude = bool(flt.exclude)
    follow, one_fs = options.follow_symlinks, options.one_filesystem
    # Without include globs the filter is the size range: tested inline (see the loop).
    plain = not flt.include
    min_size = options.min_size
    max_size = options.max_size if options.max_size is not None else float("inf")
    conf = Confinement(options.confine) if options.confine else None
    sizes: dict[int, int] = {}  # interned sizes: files worth comparing share theirs
    new_entry = FileEntry.__new__
    # A file with one link is met once when no symlink is followed and every directory is
    # listed once (seen_dirs): only then may it skip seen_files. Roots that are files are
    # always recorded (a root may also lie inside another root).
    root_list: list[bytes] = [os.fsencode(r) for r in roots]
    track_all = follow or not all(os.path.isdir(r) for r in root_list)

    for root_b in root_list:
        try:
            # A root named on the command line is followed even when it is a symlink (like find -H).
            if conf is None:
                st = os.stat(root_b)
            else:
                st, escaped = conf.open_checked(root_b)
                if escaped is not None:
                    stats.errors += 1
                    yield _outside(root_b, escaped)
                    continue
        except OSError as exc:
            stats.errors += 1
            yield WalkError(root_b, _error_text(exc))
            continue
        if stat.S_ISDIR(st.st_mode):
            if (st.st_dev, st.st_ino) not in seen_dirs:
                seen_dirs.add((st.st_dev, st.st_ino))
                stack.append((root_b, st.st_dev, (st.st_dev, st.st_ino)))
        elif stat.S_ISREG(st.st_mode):
            stats.files_seen += 1
            entry = _consider_file(root_b, os.path.basename(root_b), st, flt, seen_files, stats)
            if entry is not None:
                yield entry
        else:
            stats.special_skipped += 1

        while stack:
            dir_path, root_dev, dir_key = stack.pop()
            stats.dirs += 1
            entries: list[Any]  # os.DirEntry[bytes], or _Checked when confined: same surface
            dfd = -1  # unconfined: the directory's descriptor, for stats by name (fstatat)
            if conf is None:
                try:
                    with os.scandir(dir_path) as it:
                        entries = list(it)
                except OSError as exc:
                    stats.errors += 1
                    yield WalkError(dir_path, _error_text(exc))
                    continue
                # DirEntry.stat() lstat()s the whole path (the kernel resolves every component
                # again); fstatat through the directory's descriptor resolves one name: ~1.9x
                # cheaper per file. Only when the descriptor is the directory just listed.
                try:
                    dfd = os.open(dir_path, _O_DIR)
                    dst = os.fstat(dfd)
                    if (dst.st_dev, dst.st_ino) != dir_key:
                        os.close(dfd)
                        dfd = -1
                except OSError:
                    if dfd >= 0:
                        os.close(dfd)
                    dfd = -1
            else:
                error = None
                try:
                    dir_fd = os.open(dir_path, _O_DIR)
                except OSError as exc:
                    error = WalkError(dir_path, _error_text(exc))
                else:
                    try:
                        dst = os.fstat(dir_fd)
                        real = conf.resolved(dir_fd, dir_path)
                        if (dst.st_dev, dst.st_ino) != dir_key:
                            error = WalkError(dir_path, "replaced during the walk; skipped")
                        elif not conf.contains(real):
                            error = _outside(dir_path, real)
                        else:
                            # Listed, and every entry stat'ed, through the checked descriptor.
                            entries = _list_checked(dir_fd, dir_path, conf, follow)
                    except OSError as exc:
                        error = WalkError(dir_path, _error_text(exc))
                    finally:
                        os.close(dir_fd)
                if error is not None:
                    stats.errors += 1
                    yield error
                    continue
            # Sorted so that output and the "first name met" of a hard-linked inode are stable.
            entries.sort(key=_name)
            prefix = os.path.join(dir_path, b"")  # shared by the entries of this directory's files
            subdirs: list[tuple[bytes, int, tuple[int, int]]] = []
            # The per-entry loop is the warm re-scan's floor (one lstat per file, nothing
            # read): type tests on st_mode bits and a plain file built inline, no calls.
            try:
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
                        elif dfd >= 0:
                            st = os.stat(de.name, dir_fd=dfd, follow_symlinks=False)
                        else:
                            st = de.stat(follow_symlinks=False)
                    except OSError as exc:
                        # A dangling symlink we were asked to follow, an entry that vanished, or
                        # (confined) a symlink that leads outside the allowed roots.
                        stats.errors += 1
                        yield WalkError(path, _error_text(exc))
                        continue
                    kind = st.st_mode & _S_IFMT
                    if kind == _S_IFREG:
                        if one_fs and st.st_dev != root_dev:
                            stats.filtered += 1
                            continue
                        stats.files_seen += 1
                        size = st.st_size
                        if plain and st.st_nlink == 1 and not track_all and min_size <= size <= max_size:
                            # One name, one directory listed once: this inode cannot be met again,
                            # so it needs no entry in seen_files (~100 bytes a file). The device
                            # number is shared with the directory's (one int object, not one each).
                            # ctime equal to mtime (a file written once) is stored as None.
                            # The entry's fields set here, not through a constructor (two calls
                            # less a file: ~0.3 us of the walk's ~5 us at 200k tiny files).
                            dev = st.st_dev
                            mtime_ns, ctime_ns = st.st_mtime_ns, st.st_ctime_ns
                            entry = new_entry(FileEntry)
                            entry._dir = prefix
                            entry._name = de.name
                            entry.dev = root_dev if dev == root_dev else dev
                            entry._im = (st.st_ino << 64) | (mtime_ns + MTIME_BIAS)
                            entry.size = sizes.setdefault(size, size)  # one int object per size
                            entry._ctime = None if ctime_ns == mtime_ns else ctime_ns
                            entry.links = ()
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
                        subdirs.append((path, root_dev, key))
                    else:
                        stats.special_skipped += 1  # FIFOs, sockets, devices: never read
            finally:
                if dfd >= 0:
                    os.close(dfd)
            # Reversed so that popping visits subdirectories in name order (depth first).
            stack.extend(reversed(subdirs))


class Escaped(OSError):
    """A followed symlink whose target lies outside the allowed roots."""


class _Checked:
    """A directory entry of a confined walk, stat'ed through the checked directory descriptor
    (same surface as the os.DirEntry the unconfined walk uses)."""

    __slots__ = ("_exc", "_link", "_st", "name", "path")

    def __init__(
        self, name: bytes, path: bytes, link: bool, st: os.stat_result | None, exc: OSError | None
    ) -> None:
        self.name, self.path, self._link, self._st, self._exc = name, path, link, st, exc

    def is_symlink(self) -> bool:
        return self._link

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        if self._exc is not None:
            raise self._exc
        assert self._st is not None
        return self._st


def _list_checked(dir_fd: int, dir_path: bytes, conf: Confinement, follow: bool) -> list[_Checked]:
    out = []
    with os.scandir(dir_fd) as it:
        for de in it:
            name = os.fsencode(de.name)
            path = os.path.join(dir_path, name)
            st: os.stat_result | None = None
            exc: OSError | None = None
            link = de.is_symlink()
            try:
                if not link:
                    st = de.stat(follow_symlinks=False)
                elif follow:
                    st, escaped = conf.open_checked(name, dir_fd=dir_fd)
                    if escaped is not None:
                        st = None
                        exc = Escaped(
                            errno.EXDEV,
                            f"symlink leads outside the allowed scan roots (to {os.fsdecode(escaped)}); "
                            "not followed",
                        )
            except OSError as e:
                exc = e
            out.append(_Checked(name, path, link, st, exc))
    return out


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
            known.links = [*known.links, path]
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
