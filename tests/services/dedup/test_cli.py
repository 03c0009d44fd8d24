"""The command line as a user meets it: help, exit codes, one-line errors, formats, progress."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
from pathlib import Path

from tests.services.dedup.conftest import run_cli, write


def _dup_tree(root: Path) -> None:
    root.mkdir(exist_ok=True)
    write(root / "one", b"duplicate payload" * 100)
    write(root / "two", b"duplicate payload" * 100)
    write(root / b"\xff-three".decode("utf-8", "surrogateescape"), b"duplicate payload" * 100)
    write(root / "lonely", b"unique")


def test_help_lists_subcommands_and_options() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    for word in (b"scan", b"undo", b"chunks", b"worker"):
        assert word in top.stdout
    scan = run_cli("scan", "--help")
    assert scan.returncode == 0
    for flag in (
        b"--hash",
        b"--follow-symlinks",
        b"--one-file-system",
        b"--action",
        b"--apply",
        b"--progress",
    ):
        assert flag in scan.stdout


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    cases = [
        ("scan",),
        ("scan", str(tmp_path / "missing")),
        ("scan", str(tmp_path), "--hash", "md5"),
        ("scan", str(tmp_path), "--workers", "33"),
        ("scan", str(tmp_path), "--workers", "-1"),
        ("scan", str(tmp_path), "--min-size", "lots"),
        ("scan", str(tmp_path), "--min-size", "10K", "--max-size", "1K"),
        ("scan", str(tmp_path), "--apply"),
        ("scan", str(tmp_path), "--action", "quarantine", "--apply"),
        ("scan", str(tmp_path), "--bogus"),
        ("undo", str(tmp_path / "no-log")),
        ("frobnicate",),
    ]
    for args in cases:
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, proc.stderr)
        assert b"Traceback" not in proc.stderr


def test_exit_0_with_or_without_duplicates_and_1_when_a_path_failed(tmp_path: Path) -> None:
    _dup_tree(tmp_path / "t")
    assert run_cli("scan", "--no-cache", str(tmp_path / "t")).returncode == 0
    write(tmp_path / "alone", b"x")
    assert run_cli("scan", "--no-cache", str(tmp_path / "alone")).returncode == 0
    os.symlink(tmp_path / "nowhere", tmp_path / "t" / "dangling")
    proc = run_cli("scan", "--no-cache", "-L", str(tmp_path / "t"))
    assert proc.returncode == 1
    assert b"error: " in proc.stdout and b"dangling" in proc.stdout


def test_json_keeps_undecodable_names_exactly(tmp_path: Path) -> None:
    _dup_tree(tmp_path / "t")
    report = json.loads(run_cli("scan", "--no-cache", "--format", "json", str(tmp_path / "t")).stdout)
    (group,) = report["groups"]
    assert report["totals"]["groups"] == 1 and report["totals"]["wasted_bytes"] == 2 * 1700
    raw = [base64.b64decode(f["path_b64"]) for f in group["files"] if "path_b64" in f]
    assert [os.path.basename(p) for p in raw] == [b"\xff-three"]
    odd = next(f for f in group["files"] if "path_b64" in f)
    assert os.fsencode(odd["path"]) == raw[0]  # surrogateescape decodes back to the same bytes


def test_csv_and_table_output(tmp_path: Path) -> None:
    _dup_tree(tmp_path / "t")
    rows = list(
        csv.DictReader(
            io.StringIO(
                run_cli("scan", "--no-cache", "--format", "csv", str(tmp_path / "t")).stdout.decode(
                    "utf-8", "surrogateescape"
                )
            )
        )
    )
    assert len(rows) == 3 and {r["group"] for r in rows} == {"1"}
    table = run_cli("scan", "--no-cache", str(tmp_path / "t")).stdout
    assert b"\xff-three" in table  # the real bytes of the name, not a mangled replacement
    assert b"1 groups, 3 files, 2 redundant" in table


def test_progress_bar_only_on_request_when_not_a_tty(tmp_path: Path) -> None:
    _dup_tree(tmp_path / "t")
    quiet = run_cli("scan", "--no-cache", str(tmp_path / "t"))
    assert quiet.stderr == b""
    loud = run_cli("scan", "--no-cache", "--progress", str(tmp_path / "t"))
    assert b"file" in loud.stderr and b"verify" in loud.stderr
    assert b"1 groups, 3 files" in loud.stdout


def test_dry_run_is_the_default_and_changes_nothing(tmp_path: Path) -> None:
    _dup_tree(tmp_path / "t")
    before = {p: os.stat(p).st_ino for p in (tmp_path / "t").iterdir()}
    proc = run_cli("scan", "--no-cache", "--action", "hardlink", str(tmp_path / "t"))
    assert proc.returncode == 0
    assert proc.stdout.count(b"would hardlink") == 2
    assert b"dry run: 2 hardlink steps planned" in proc.stdout
    assert {p: os.stat(p).st_ino for p in (tmp_path / "t").iterdir()} == before
