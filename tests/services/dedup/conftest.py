"""Shared helpers for the dedup tests: generated trees and running the CLI as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def run_cli(
    *args: str | bytes, check: bool = False, timeout: float = 120, **kw
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "services.dedup", *args],
        cwd=kw.pop("cwd", REPO),
        capture_output=True,
        timeout=timeout,
        **kw,
    )
    if check and proc.returncode not in (0, 1):
        raise AssertionError(f"exit {proc.returncode}: {proc.stderr.decode(errors='replace')}")
    return proc


def scan_json(*args: str | bytes) -> dict:
    proc = run_cli("scan", "--format", "json", "--no-cache", "--no-progress", *args, check=True)
    return json.loads(proc.stdout)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    from services.dedup.files.treegen import generate_tree

    root = tmp_path / "tree"
    generate_tree(root, files=500, total_bytes=12 << 20, seed=7)
    return root


def write(path: Path | bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def world_readable_tmp(tmp_path_factory: pytest.TempPathFactory):
    """A directory that user `nobody` can traverse (pytest's own base is 0700)."""
    import tempfile

    d = tempfile.mkdtemp(prefix="pg-dedup-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    subprocess.run(["chmod", "-R", "u+rwx", d], check=False)
    subprocess.run(["rm", "-rf", d], check=False)
