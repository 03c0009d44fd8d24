"""Deterministic test and benchmark trees: the same seed gives the same tree, byte for byte.

    python -m services.dedup.files.treegen ROOT --files 20000 --bytes 1.5G --seed 1

Besides ordinary unique and duplicated files of log-uniform sizes, a tree holds the cases
that trip duplicate finders: empty files, files of equal size differing only in the first,
the last or a middle byte (both below and above the partial-hash size), hard links, symlinks
(one to a file, one loop to an ancestor), sparse files equal to a dense file, and names that
are not valid UTF-8. Content comes from a seeded random pool, so generating is fast and
needs no entropy source.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from dataclasses import asdict, dataclass

POOL_SIZE = 64 << 20


@dataclass(slots=True)
class TreeManifest:
    root: str
    files: int = 0
    bytes: int = 0
    duplicate_copies: int = 0
    hard_links: int = 0
    symlinks: int = 0
    empty: int = 0
    sparse: int = 0
    odd_names: int = 0
    near_misses: int = 0


class _Content:
    def __init__(self, rng: random.Random, pool_size: int) -> None:
        self.rng = rng
        self.pool = rng.randbytes(pool_size)

    def make(self, size: int) -> bytes:
        """Fresh content: a pool slice, stamped with a random prefix so two files never collide."""
        if size == 0:
            return b""
        stamp = self.rng.randbytes(min(size, 16))
        if size <= 16:
            return stamp
        body_len = size - 16
        parts = []
        while body_len > 0:
            take = min(body_len, len(self.pool))
            off = self.rng.randrange(0, len(self.pool) - take + 1)
            parts.append(self.pool[off : off + take])
            body_len -= take
        return stamp + b"".join(parts)


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _log_uniform_top(mean: int) -> float:
    """Upper bound H of a log-uniform size on [1, H] whose mean (H - 1) / ln H is `mean`."""
    hi = max(4.0, mean * 4.0)
    for _ in range(60):  # fixed-point iteration H = mean * ln H + 1 converges quickly
        hi = mean * math.log(hi) + 1
    return max(hi, 2.0)


def _size(rng: random.Random, top: float) -> int:
    # Log-uniform: many small files and a long tail of large ones, like real trees.
    return max(1, int(math.exp(rng.uniform(0, math.log(top)))))


def generate_tree(
    root: str | os.PathLike,
    *,
    files: int = 2000,
    total_bytes: int = 64 << 20,
    seed: int = 1,
    dup_ratio: float = 0.3,
    tricky: bool = True,
    dirs: int | None = None,
    pool_size: int | None = None,
) -> TreeManifest:
    rng = random.Random(seed)
    root_b = os.fsencode(root)
    os.makedirs(root_b, exist_ok=True)
    content = _Content(rng, pool_size or min(POOL_SIZE, max(1 << 20, total_bytes // 4)))
    man = TreeManifest(root=os.fsdecode(root_b))
    ndirs = dirs or max(1, files // 100)
    dir_paths = []
    for i in range(ndirs):
        depth = rng.randint(1, 3)
        parts = [f"d{rng.randrange(ndirs):04d}".encode() for _ in range(depth - 1)] + [f"dir{i:04d}".encode()]
        d = os.path.join(root_b, *parts)
        os.makedirs(d, exist_ok=True)
        dir_paths.append(d)

    originals: list[bytes] = []
    n = 0

    def new_name() -> bytes:
        nonlocal n
        n += 1
        return os.path.join(rng.choice(dir_paths), f"f{n:06d}.bin".encode())

    if tricky:
        _tricky(root_b, rng, content, man)
    top = _log_uniform_top(max(1, (total_bytes - man.bytes) // max(1, files - man.files)))

    while man.files < files and man.bytes < total_bytes:
        if originals and rng.random() < dup_ratio:
            with open(rng.choice(originals), "rb") as f:
                data = f.read()
            _write(new_name(), data)
            man.duplicate_copies += 1
        else:
            data = content.make(min(_size(rng, top), max(1, total_bytes - man.bytes)))
            path = new_name()
            _write(path, data)
            originals.append(path)
        man.bytes += len(data)
        man.files += 1
    return man


def _tricky(root: bytes, rng: random.Random, content: _Content, man: TreeManifest) -> None:
    t = os.path.join(root, b"tricky")
    os.makedirs(t, exist_ok=True)

    def put(name: bytes, data: bytes) -> bytes:
        p = os.path.join(t, name)
        _write(p, data)
        man.files += 1
        man.bytes += len(data)
        return p

    for i in range(3):
        put(f"empty{i}".encode(), b"")
        man.empty += 1
    # Equal sizes that differ in exactly one byte: first, last, middle; small and large.
    for size in (100, 3 * 4096 + 1, 1 << 20):
        base = content.make(size)
        put(f"near{size}-base".encode(), base)
        put(f"near{size}-copy".encode(), base)  # a true duplicate among the near misses
        for where, idx in (("first", 0), ("last", size - 1), ("middle", size // 2)):
            b = bytearray(base)
            b[idx] ^= 0xFF
            put(f"near{size}-{where}".encode(), bytes(b))
            man.near_misses += 1
        man.duplicate_copies += 1
    # Hard links: an inode with three names, plus an independent copy of it.
    data = content.make(50_000)
    a = put(b"linked-a", data)
    for name in (b"linked-b", b"linked-c"):
        os.link(a, os.path.join(t, name))
        man.hard_links += 1
    put(b"linked-copy", data)
    man.duplicate_copies += 1
    # Symlinks: a loop back to the root, and a link to a file (neither followed by default).
    os.symlink(b"..", os.path.join(t, b"loop"))
    os.symlink(b"linked-copy", os.path.join(t, b"symlink-to-file"))
    man.symlinks += 2
    # Sparse files: two with the same hole and data, one dense file with equal bytes.
    block = content.make(4096)
    for name in (b"sparse-1", b"sparse-2"):
        p = os.path.join(t, name)
        with open(p, "wb") as f:
            f.truncate(2 << 20)
            f.seek(1 << 20)
            f.write(block)
        man.files += 1
        man.sparse += 1
        man.bytes += 2 << 20
    dense = bytearray(2 << 20)
    dense[1 << 20 : (1 << 20) + 4096] = block
    put(b"sparse-dense", bytes(dense))
    # Names that are not valid UTF-8, one a duplicate of the other.
    odd = content.make(777)
    put(b"odd-\xff\xfe.bin", odd)
    put(b"odd-\xc3\x28-copy.bin", odd)
    man.odd_names += 2
    man.duplicate_copies += 1


def main(argv: list[str] | None = None) -> int:
    from libs.service.cli import UsageError
    from services.dedup.files.sizes import parse_size

    p = argparse.ArgumentParser(
        prog="python -m services.dedup.files.treegen", description=__doc__.splitlines()[0]
    )
    p.add_argument("root")
    p.add_argument("--files", type=int, default=20_000)
    p.add_argument("--bytes", type=parse_size, default=parse_size("1536M"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dup-ratio", type=float, default=0.3)
    args = p.parse_args(argv)
    if os.path.exists(args.root) and os.listdir(args.root):
        raise SystemExit(f"error: {args.root} exists and is not empty")
    try:
        man = generate_tree(
            args.root, files=args.files, total_bytes=args.bytes, seed=args.seed, dup_ratio=args.dup_ratio
        )
    except UsageError as exc:  # pragma: no cover
        raise SystemExit(f"error: {exc}") from None
    json.dump(asdict(man), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
