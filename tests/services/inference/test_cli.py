"""python -m services.inference as a process: --help, bad flags, hash-key, serve and SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx

from tests.conftest import free_port, wait_for_port

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.inference", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )


def test_help_lists_settings() -> None:
    r = run("--help")
    assert r.returncode == 0
    for flag in ("--kv-cache-tokens", "--max-step-tokens", "--grpc-port", "--tenants"):
        assert flag in r.stdout


def test_bad_flag_is_one_line_exit_2() -> None:
    r = run("--max-seqs", "many")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--max-seqs" in r.stderr
    r = run("--tenants", '{"x": {"weight": 1}}')
    assert r.returncode == 2 and "key_sha256" in r.stderr and "Traceback" not in r.stderr


def test_hash_key() -> None:
    r = run("hash-key", "dev-alice-key")
    assert r.returncode == 0
    assert r.stdout.strip() == "724c3a14d3ea8b29272df65af1388d5d2f8db3bb8838f97832ee174011b5bd02"


def test_serves_and_exits_zero_on_sigterm() -> None:
    port, gport = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.inference",
            "--port",
            str(port),
            "--grpc-port",
            str(gport),
            "--no-embeddings",
            "--d-model",
            "64",
            "--n-layers",
            "2",
            "--torch-threads",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    try:
        wait_for_port(port, timeout=60)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"prompt": "hi", "max_tokens": 4},
            headers={"Authorization": "Bearer dev-bob-key"},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"Traceback" not in proc.stderr.read()
