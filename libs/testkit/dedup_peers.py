"""Run fdupes, jdupes and rdfind and read their duplicate groups, independently of the engine.

A group is a frozenset of (device, inode): the tools differ in how they show hard links (one
name, or all names with -H), so comparing inodes compares what they found, not how they
print it. Groups with fewer than two distinct inodes are dropped. Empty files are excluded
by every tool: fdupes -n, jdupes by default (no -z), rdfind -ignoreempty true (its default).
Symlinks are followed by none of them by default, as in the engine.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence

Groups = set[frozenset[tuple[int, int]]]


def _inode_groups(paths_per_group: list[list[bytes]]) -> Groups:
    out: Groups = set()
    for paths in paths_per_group:
        inodes = set()
        for p in paths:
            st = os.lstat(p)
            inodes.add((st.st_dev, st.st_ino))
        if len(inodes) > 1:
            out.add(frozenset(inodes))
    return out


def _blank_line_groups(stdout: bytes) -> list[list[bytes]]:
    groups: list[list[bytes]] = []
    current: list[bytes] = []
    for line in stdout.split(b"\n"):
        if line:
            current.append(line)
        elif current:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def fdupes_command(roots: Sequence[str]) -> list[str]:
    return ["fdupes", "-r", "-n", "-q", *roots]


def jdupes_command(roots: Sequence[str]) -> list[str]:
    return ["jdupes", "-r", "-q", *roots]


def rdfind_command(roots: Sequence[str], results: str) -> list[str]:
    return ["rdfind", "-ignoreempty", "true", "-outputname", results, *roots]


def parse_blank_line_output(stdout: bytes) -> Groups:
    return _inode_groups(_blank_line_groups(stdout))


def parse_rdfind_results(text: bytes) -> Groups:
    by_id: dict[int, set[tuple[int, int]]] = {}
    for line in text.split(b"\n"):
        if not line or line.startswith(b"#"):
            continue
        # duptype id depth size device inode priority name (name may contain spaces)
        fields = line.split(b" ", 7)
        gid, dev, ino = abs(int(fields[1])), int(fields[4]), int(fields[5])
        by_id.setdefault(gid, set()).add((dev, ino))
    return {frozenset(v) for v in by_id.values() if len(v) > 1}


def run_fdupes(roots: Sequence[str]) -> Groups:
    out = subprocess.run(fdupes_command(roots), capture_output=True, check=True, timeout=300)
    return parse_blank_line_output(out.stdout)


def run_jdupes(roots: Sequence[str]) -> Groups:
    out = subprocess.run(jdupes_command(roots), capture_output=True, timeout=300)
    if out.returncode not in (0, 1):  # jdupes exits 1 on some non-fatal warnings
        raise RuntimeError(f"jdupes failed: {out.stderr[-500:]!r}")
    return parse_blank_line_output(out.stdout)


def run_rdfind(roots: Sequence[str]) -> Groups:
    with tempfile.TemporaryDirectory() as d:
        results = os.path.join(d, "results.txt")
        subprocess.run(rdfind_command(roots, results), capture_output=True, check=True, timeout=300, cwd=d)
        with open(results, "rb") as f:
            return parse_rdfind_results(f.read())


def engine_groups_from_json(report: dict) -> Groups:
    return {
        frozenset((f["dev"], f["ino"]) for f in g["files"]) for g in report["groups"] if len(g["files"]) > 1
    }
