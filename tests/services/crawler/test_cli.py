"""The one-shot crawl CLI: --help, and bad input as one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

CRAWL = [sys.executable, "-m", "services.crawler", "crawl"]


def test_help_names_the_options():
    out = subprocess.run([*CRAWL, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--resolve" in out.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "SEED"),
        (["--resolve", "nonsense", "http://h0000.sim.test/"], "--resolve"),
        (["--max-pages", "abc", "http://h0000.sim.test/"], "--max-pages"),
        (["ftp://example.test/"], "ftp"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str):
    out = subprocess.run([*CRAWL, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], out.stderr
