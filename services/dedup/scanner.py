"""One scan: walk the roots, run the stage pipeline, gather the result and its totals."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from services.dedup.hashcache import HashCache
from services.dedup.stages import (
    Group,
    NoProgress,
    Progress,
    ScanConfig,
    ScanContext,
    StageStats,
    find_duplicates,
)
from services.dedup.walk import FileEntry, WalkError, WalkOptions, WalkStats, walk


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

    @property
    def bytes_read(self) -> int:
        return sum(s.bytes_read for s in self.stages)

    @property
    def wasted_bytes(self) -> int:
        return sum(g.wasted_bytes for g in self.groups)

    @property
    def duplicate_files(self) -> int:
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
    hits_before = cache.counters.hits if cache else 0
    groups = find_duplicates(walked.files, ctx)
    return ScanResult(
        groups=groups,
        hard_linked=[f for f in walked.files if f.links],
        errors=walked.errors + ctx.errors,
        walk_stats=walked.stats,
        stages=ctx.stages,
        config=ctx.config,
        seconds=time.perf_counter() - t0,
        files_scanned=len(walked.files),
        cache_hits=(cache.counters.hits - hits_before) if cache else 0,
    )
