"""One scan: walk the roots, run the stage pipeline, gather the result and its totals.

`run_scan(paths, ScanOptions(...))` is the one entry point both the CLI (`scan`) and the
service's scan jobs (POST /v1/scans) call: same defaults (ScanOptions), same hash cache
handling (an unopenable cache is a warning in `result.warnings`, and the scan runs without
it), same meaning of `min_size` (0 includes empty files).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from services.dedup.files.stages import (
    Group,
    NoProgress,
    Progress,
    ScanConfig,
    ScanContext,
    StageStats,
    find_duplicates,
)
from services.dedup.files.walk import FileEntry, WalkError, WalkOptions, WalkStats, walk

if TYPE_CHECKING:  # sqlite3 is imported only by a scan that uses a cache
    from services.dedup.files.hashcache import HashCache


@dataclass(slots=True)
class ScanResult:
    groups: list[Group]
    hard_linked: list[FileEntry]  # inodes met under more than one name: already deduplicated
    errors: list[WalkError]
    walk_stats: WalkStats
    stages: list[StageStats]
    config: ScanConfig
    seconds: float
    files_scanned: int
    cache_hits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Sums kept up to date by their producer (the watcher), else computed from the groups.
    known_wasted_bytes: int | None = None
    known_duplicate_files: int | None = None

    @property
    def bytes_read(self) -> int:
        return sum(s.bytes_read for s in self.stages)

    @property
    def wasted_bytes(self) -> int:
        if self.known_wasted_bytes is not None:
            return self.known_wasted_bytes
        return sum(g.wasted_bytes for g in self.groups)

    @property
    def duplicate_files(self) -> int:
        if self.known_duplicate_files is not None:
            return self.known_duplicate_files
        return sum(len(g.files) for g in self.groups)

    def totals(self) -> dict[str, Any]:
        return {
            "files_scanned": self.files_scanned,
            "groups": len(self.groups),
            "files_in_groups": self.duplicate_files,
            "redundant_files": self.duplicate_files - len(self.groups),
            "wasted_bytes": self.wasted_bytes,
            "bytes_read": self.bytes_read,
            "hard_linked_inodes": len(self.hard_linked),
            "errors": len(self.errors),
            "cache_hits": self.cache_hits,
            "seconds": round(self.seconds, 6),
        }


def scan(
    roots: Iterable[str | bytes | os.PathLike],
    walk_options: WalkOptions | None = None,
    config: ScanConfig | None = None,
    *,
    cache: HashCache | None = None,
    progress: Progress | None = None,
) -> ScanResult:
    t0 = time.perf_counter()
    walked = walk(list(roots), walk_options or WalkOptions())
    ctx = ScanContext(config=config or ScanConfig(), cache=cache, progress=progress or NoProgress())
    hits_before = cache.counters.hits if cache is not None else 0
    files, walked.files = walked.files, []
    hard_linked = [f for f in files if f.links]
    files_scanned = len(files)
    # The list is emptied once sizes are grouped: entries of a unique size go then.
    groups = find_duplicates(files, ctx, consume=True)
    return ScanResult(
        groups=groups,
        hard_linked=hard_linked,
        errors=walked.errors + ctx.errors,
        walk_stats=walked.stats,
        stages=ctx.stages,
        config=ctx.config,
        seconds=time.perf_counter() - t0,
        files_scanned=files_scanned,
        cache_hits=(cache.counters.hits - hits_before) if cache is not None else 0,
    )


MAX_WORKERS = 32  # most parallel readers a scan takes (CLI and service alike)


def parse_workers(value: int | str) -> int:
    """`--workers` / the scan request's `workers`: "auto" or 0 = adaptive (0), else 1..32.
    ValueError (a message fit for one line) otherwise; the CLI and the service both call it."""
    if isinstance(value, str):
        text = value.strip()
        if text == "auto":
            return 0
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected 'auto' or a count 0-{MAX_WORKERS}, got {text!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WORKERS:
        raise ValueError(f"expected 'auto' or a count 0-{MAX_WORKERS}, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """Everything one scan takes, with the defaults the CLI and the service share."""

    algorithm: str = "blake3"
    partial_size: int = 4096
    workers: int = 0  # 0: adaptive (1 reader on a warm page cache, more while reads wait on disk)
    order: str = "inode"  # read in (device, inode) order: close to on-disk order
    follow_symlinks: bool = False
    one_file_system: bool = False
    min_size: int = 1  # 0: empty files are reported as duplicates of each other too
    max_size: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    confine: tuple[str, ...] = ()  # allowed roots (the service's --scan-roots); empty = none
    cache_dir: str | None = None  # hash cache directory; None = no cache
    reverify: bool = False  # byte-verify even members the cache proved before

    def walk_options(self) -> WalkOptions:
        return WalkOptions(
            follow_symlinks=self.follow_symlinks,
            one_filesystem=self.one_file_system,
            min_size=self.min_size,
            max_size=self.max_size,
            include=tuple(self.include),
            exclude=tuple(self.exclude),
            confine=tuple(self.confine),
        )

    def scan_config(self) -> ScanConfig:
        return ScanConfig(
            algorithm=self.algorithm,
            partial_size=self.partial_size,
            workers=self.workers,
            order=self.order,
            trust_verified_cache=not self.reverify,
        )


def open_cache(
    cache_dir: str | None, warn: Callable[[str], None], roots: Sequence[str | bytes | os.PathLike] = ()
) -> HashCache | None:
    """The hash cache of these roots (one SQLite file per root set in `cache_dir`), or None
    with a warning: unwritable or damaged, a cache is an optimisation and the scan still runs
    (reading everything)."""
    if not cache_dir:
        return None
    import sqlite3

    from services.dedup.files.hashcache import HashCache

    try:
        return HashCache(cache_dir, roots)
    except (ImportError, OSError, sqlite3.Error) as exc:
        warn(f"hash cache unavailable ({exc}); scanning without it")
        return None


def run_scan(
    paths: Iterable[str | bytes | os.PathLike],
    options: ScanOptions | None = None,
    *,
    progress: Progress | None = None,
) -> ScanResult:
    """The scan of the CLI and of the service's jobs. Raises ValueError for a bad option."""
    options = options or ScanOptions()
    config = options.scan_config()  # validates before anything is opened
    paths = list(paths)
    warnings: list[str] = []
    cache = open_cache(options.cache_dir, warnings.append, paths)
    try:
        result = scan(paths, options.walk_options(), config, cache=cache, progress=progress)
    finally:
        if cache is not None:
            cache.close()
            warnings.extend(cache.warnings)
    result.warnings.extend(warnings)
    return result
