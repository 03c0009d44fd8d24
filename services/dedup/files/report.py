"""Output of a scan: a readable table, JSON and CSV for machines, with totals.

Paths are decoded with surrogateescape: written to a stream whose error handler is also
surrogateescape they come out as the original bytes. JSON adds `path_b64` (the exact bytes)
for names that are not valid UTF-8, since a JSON reader may reject lone surrogates.
"""

from __future__ import annotations

import base64
import codecs
import csv
import json
import os
import sys
from typing import Any, TextIO

from services.dedup.files.indented_json import encode_at
from services.dedup.files.scanner import ScanResult
from services.dedup.files.stages import Group
from services.dedup.files.walk import _M64, MTIME_BIAS, FileEntry


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


_UTF8_FS = codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"


def path_json(path: bytes) -> dict[str, str]:
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return {"path": os.fsdecode(path), "path_b64": base64.b64encode(path).decode("ascii")}
    # Valid UTF-8 on a UTF-8 filesystem: fsdecode would give this very text (one decode, not two).
    return {"path": text if _UTF8_FS else os.fsdecode(path)}


def _file_json(f: FileEntry) -> dict[str, Any]:
    d: dict[str, Any] = path_json(f.path)
    d["dev"], d["ino"], d["mtime_ns"] = f.dev, f.ino, f.mtime_ns
    if f.links:
        d["links"] = [path_json(p) for p in f.links]
    return d


_ascii = json.encoder.encode_basestring_ascii  # what json.dumps writes a str with (C)
_FILE_SEP = "\n        },\n        {\n          "


def _group_text(g: Group) -> str | None:
    """encode_at(_group_json(g), 2), made directly (no dict per file, one format per file):
    the report of 200k tiny files was ~15% of a warm scan's time. None for a group the
    general path must write (a name that is not UTF-8, a file with other names, a non-UTF-8
    filesystem encoding)."""
    if not _UTF8_FS:
        return None
    parts = []
    for f in g.files:
        if f.links:
            return None
        try:
            path = f.path.decode("utf-8")
        except UnicodeDecodeError:
            return None
        im = f._im  # (inode << 64 | mtime_ns + bias), see FileEntry
        parts.append(
            f'"path": {_ascii(path)},\n          "dev": {f.dev},\n          "ino": {im >> 64},\n'
            f'          "mtime_ns": {(im & _M64) - MTIME_BIAS}'
        )
    digest = f'"{g.digest.hex()}"' if g.digest else "null"
    return (
        f'{{\n      "size": {g.size},\n      "digest": {digest},\n      "wasted_bytes": {g.wasted_bytes},'
        f'\n      "files": [\n        {{\n          {_FILE_SEP.join(parts)}\n        }}\n      ]\n    }}'
    )


def _group_json(g: Group) -> dict[str, Any]:
    return {
        "size": g.size,
        "digest": g.digest.hex() if g.digest else None,
        "wasted_bytes": g.wasted_bytes,
        "files": [_file_json(f) for f in g.files],
    }


def to_dict(result: ScanResult, *, groups: bool = True) -> dict[str, Any]:
    return {
        "totals": result.totals(),
        "config": {
            "algorithm": result.config.algorithm,
            "partial_size": result.config.partial_size,
            "workers": result.config.workers,
            "order": result.config.order,
        },
        "groups": [_group_json(g) for g in result.groups] if groups else [],
        "hard_linked": [_file_json(f) for f in result.hard_linked],
        "errors": [{**path_json(e.path), "error": e.error} for e in result.errors],
        "stages": [s.as_dict() for s in result.stages],
        "walk": {k: getattr(result.walk_stats, k) for k in result.walk_stats.__slots__},
        "warnings": list(result.warnings),
    }


# Files encoded per write (whole groups, so a run may hold more): the report of 200k files
# would otherwise be built whole (its dicts, then its text), which cost more memory than the
# scan itself. Counted in files, not groups: 512 groups of the smallest sizes held 17k files
# (3.6 MB of text and their dicts: 10 MiB at once at 200k tiny files).
FILES_PER_WRITE = 1024


def write_json(result: ScanResult, out: TextIO) -> None:
    """The text of json.dumps(to_dict(result), indent=2), written as it is made: the
    groups in runs of about FILES_PER_WRITE files (the C encoder makes the text, see
    indented_json)."""
    head = to_dict(result, groups=False)
    out.write("{")
    for i, (key, value) in enumerate(head.items()):
        out.write(("\n  " if i == 0 else ",\n  ") + json.dumps(key) + ": ")
        if key != "groups" or not result.groups:
            out.write(encode_at(value, 1))
            continue
        out.write("[")
        sep = "\n    "
        run: list[str] = []
        files = 0
        for g in result.groups:
            text = _group_text(g) if g.files else None
            run.append(text if text is not None else encode_at(_group_json(g), 2))
            files += len(g.files)
            if files >= FILES_PER_WRITE:
                out.write(sep + ",\n    ".join(run))
                sep, run, files = ",\n    ", [], 0
        if run:
            out.write(sep + ",\n    ".join(run))
        out.write("\n  ]")
    out.write("\n}\n")


def write_csv(result: ScanResult, out: TextIO) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["group", "size", "digest", "path", "dev", "ino", "also_linked_as"])
    for i, g in enumerate(result.groups, 1):
        for f in g.files:
            w.writerow(
                [
                    i,
                    g.size,
                    g.digest.hex() if g.digest else "",
                    os.fsdecode(f.path),
                    f.dev,
                    f.ino,
                    "|".join(os.fsdecode(p) for p in f.links),
                ]
            )


def write_table(result: ScanResult, out: TextIO, *, show_stages: bool = True) -> None:
    for i, g in enumerate(result.groups, 1):
        digest = g.digest.hex()[:16] if g.digest else "(content compared)"
        out.write(
            f"group {i}: {len(g.files)} files x {human_bytes(g.size)}"
            f" ({g.size} bytes), wasted {human_bytes(g.wasted_bytes)}  {digest}\n"
        )
        for f in g.files:
            out.write(f"  {os.fsdecode(f.path)}\n")
            for link in f.links:
                out.write(f"    = {os.fsdecode(link)} (already hard-linked)\n")
        out.write("\n")
    if result.hard_linked:
        out.write(f"already hard-linked: {len(result.hard_linked)} inodes with several names\n")
    for e in result.errors:
        out.write(f"error: {os.fsdecode(e.path)}: {e.error}\n")
    t = result.totals()
    if show_stages:
        out.write(
            "\nstage    groups_in  files_in  groups_out  files_out     bytes_read  cache_hits  seconds\n"
        )
        for s in result.stages:
            out.write(
                f"{s.name:<8} {s.groups_in:>9} {s.files_in:>9} {s.groups_out:>11} {s.files_out:>10}"
                f" {s.bytes_read:>14} {s.cache_hits:>11} {s.seconds:>8.3f}\n"
            )
    out.write(
        f"\n{t['groups']} groups, {t['files_in_groups']} files, {t['redundant_files']} redundant,"
        f" {human_bytes(t['wasted_bytes'])} wasted; scanned {t['files_scanned']} files,"
        f" read {human_bytes(t['bytes_read'])} in {t['seconds']:.2f}s; {t['errors']} errors\n"
    )
