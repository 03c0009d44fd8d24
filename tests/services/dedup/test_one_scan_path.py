"""The CLI's `scan` and the service's scan jobs are one scan (scanner.run_scan): same groups
on the same tree, same defaults, same meaning of min_size 0, same handling of a bad cache."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.dedup.files.scanner import ScanOptions
from services.dedup.worker import DedupSettings, ScanRequest, build_app
from tests.services.dedup.conftest import run_cli, write

AUTH = {"Authorization": "Bearer dev-dedup-key"}


def _path(f: dict) -> bytes:  # the exact bytes of a reported name
    return base64.b64decode(f["path_b64"]) if "path_b64" in f else os.fsencode(f["path"])


def _groups(report: dict) -> list[list[bytes]]:
    return sorted(sorted(os.path.basename(_path(f)) for f in g["files"]) for g in report["groups"])


def _service_report(root: Path, body: dict, cache: str | None = None) -> dict:
    settings = DedupSettings(scan_roots=[str(root)], scan_cache=cache)
    with TestClient(build_app(settings)) as c:
        r = c.post("/v1/scans", json={"paths": [str(root)], **body}, headers=AUTH)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = c.get(f"/v1/scans/{r.json()['id']}", headers=AUTH).json()
            if job["status"] in ("done", "failed"):
                break
            time.sleep(0.02)
    assert job["status"] == "done", job
    return job["report"]


def _cli_report(root: Path, *args: str) -> tuple[dict, str]:
    proc = run_cli("scan", "--format", "json", "--no-progress", str(root), *args, check=True)
    return json.loads(proc.stdout), proc.stderr.decode()


@pytest.fixture
def small_tree(tmp_path: Path, tree: Path) -> Path:
    for name in ("empty1", "empty2", "empty3"):  # besides the generator's own empty files
        write(tree / name, b"")
    return tree


def test_same_tree_same_groups_through_cli_and_service(small_tree: Path) -> None:
    cli, _ = _cli_report(small_tree, "--no-cache")
    svc = _service_report(small_tree, {})
    assert _groups(cli) and _groups(cli) == _groups(svc)
    assert cli["totals"]["files_scanned"] == svc["totals"]["files_scanned"]
    assert cli["config"] == svc["config"]  # the same defaults (ScanOptions)
    assert not any(p.startswith(b"empty") for g in _groups(cli) for p in g)


def test_min_size_zero_includes_empty_files_in_both(small_tree: Path) -> None:
    cli, _ = _cli_report(small_tree, "--no-cache", "--min-size", "0")
    svc = _service_report(small_tree, {"min_size": 0})
    assert any({b"empty1", b"empty2", b"empty3"} <= set(g) for g in _groups(cli))
    assert _groups(cli) == _groups(svc)
    include_empty, _ = _cli_report(small_tree, "--no-cache", "--include-empty")
    assert _groups(include_empty) == _groups(cli)


def test_an_unopenable_cache_is_a_warning_in_both(small_tree: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache-is-a-file"
    write(not_a_dir, b"x")
    cli, stderr = _cli_report(small_tree, "--cache", str(not_a_dir))
    assert "warning: hash cache unavailable" in stderr
    assert cli["warnings"] and "hash cache unavailable" in cli["warnings"][0]
    svc = _service_report(small_tree, {}, cache=str(not_a_dir))
    assert svc["warnings"] == cli["warnings"]
    assert _groups(svc) == _groups(cli)


def test_the_request_defaults_are_the_cli_defaults() -> None:
    from services.dedup.cli import build_parser

    args = build_parser().parse_args(["scan", "x"])
    d = ScanOptions()
    req = ScanRequest(paths=["x"])
    for name in ("algorithm", "workers", "min_size", "max_size", "follow_symlinks", "one_file_system"):
        assert getattr(req, name) == getattr(d, name), name
    for name in (
        "algorithm",
        "workers",
        "min_size",
        "max_size",
        "follow_symlinks",
        "one_file_system",
        "order",
    ):
        assert getattr(args, name) == getattr(d, name), name


@pytest.mark.parametrize("value", ["auto", 0, "0", 1, 4, 32])
def test_workers_auto_and_counts_mean_the_same_in_cli_and_service(value: int | str) -> None:
    from services.dedup.cli import build_parser

    args = build_parser().parse_args(["scan", "x", "--workers", str(value)])
    req = ScanRequest(paths=["x"], workers=value)
    assert req.options(["x"], None).workers == args.workers == (0 if value == "auto" else int(value))


def test_scan_job_accepts_auto_and_0_workers_and_names_a_bad_count(tmp_path: Path) -> None:
    write(tmp_path / "a", b"same bytes")
    write(tmp_path / "b", b"same bytes")
    for workers in ("auto", 0):
        report = _service_report(tmp_path, {"workers": workers})
        assert _groups(report) == [[b"a", b"b"]], workers
    settings = DedupSettings(scan_roots=[str(tmp_path)])
    with TestClient(build_app(settings)) as c:
        for bad in (33, -1, "lots", True):
            r = c.post("/v1/scans", json={"paths": [str(tmp_path)], "workers": bad}, headers=AUTH)
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["error"]["field"].startswith("body.workers"), r.json()
