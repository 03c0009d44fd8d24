"""What a new user meets in the first hour: the launcher's banner links work, the compose file
runs containers the way the docs say (build context, CPU limits, readiness, loopback Redis)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from deploy.topology import ROOT
from tests.conftest import free_port, need_binary


def test_banner_prometheus_links_answer_200(tmp_path: Path):
    need_binary("prometheus")
    offset = free_port() - 9090
    args = ["--only", "prometheus", "--port-offset", str(offset), "--var-dir", str(tmp_path)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.launch", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for _ in range(200):  # bounded: the launcher prints a handful of lines
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "stack up" in line:
                break
        banner = next((ln for ln in lines if ln.split()[:1] == ["prometheus"] and "http" in ln), None)
        assert banner is not None, "".join(lines)
        urls = re.findall(r"http://\S+?(?=[\s,)]|$)", banner)
        assert any(u.endswith("/targets") for u in urls) and any(u.endswith("/alerts") for u in urls)
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as resp:
                assert resp.status == 200, url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
