"""Supervision with the stack's own services: a service killed with SIGKILL comes back through
the launcher while its neighbours (the fault proxy in front of it, Prometheus) keep running,
the restart is counted, and Prometheus scrapes the count from the launcher."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from deploy.topology import ROOT, local_services
from libs.testkit.net import free_port_offset
from tests.conftest import free_port, need_binary


def get(url: str, host: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def free_offset() -> int:
    return free_port_offset([p for s in local_services() for p in s.ports], start=2000, step=173)


def wait_until(predicate, what: str, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def test_killed_websim_comes_back_behind_the_fault_proxy_and_prometheus_counts_it(tmp_path: Path):
    need_binary("prometheus")
    offset, metrics = free_offset(), free_port()
    only = "websim,toxiproxy,prometheus"
    args = ["--only", only, "--no-deps", "--port-offset", str(offset), "--metrics-port", str(metrics)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploy.launch", *args, "--var-dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    supervisor = f"http://127.0.0.1:{metrics}"
    through_proxy = f"http://127.0.0.1:{18090 + offset}/"
    prometheus = f"http://127.0.0.1:{9090 + offset}"

    def services() -> dict:
        return json.loads(get(f"{supervisor}/services")[1] or b"{}")

    try:
        output = []
        for _ in range(200):  # bounded: a handful of lines until the stack is up
            line = proc.stdout.readline()
            output.append(line)
            if not line or "stack up" in line:
                break
        assert "stack up" in "".join(output), "".join(output)
        before = services()
        assert get(through_proxy, host="h0001.sim.test")[0] == 200  # crawler_websim hop works

        subprocess.run(["kill", "-9", str(before["websim"]["pid"])], check=True)
        after = wait_until(
            lambda: (s := services())["websim"]["up"] and s["websim"]["pid"] != before["websim"]["pid"] and s,
            "websim restarted and healthy",
        )
        assert after["websim"]["restarts"] == 1
        for other in ("toxiproxy", "prometheus"):  # untouched
            assert after[other]["pid"] == before[other]["pid"] and after[other]["restarts"] == 0
        assert get(through_proxy, host="h0001.sim.test")[0] == 200  # the proxy reaches the new one

        query = urllib.parse.quote('launcher_service_restarts_total{service="websim"}')

        def scraped() -> bool:
            body = json.loads(get(f"{prometheus}/api/v1/query?query={query}")[1] or b"{}")
            result = body.get("data", {}).get("result", [])
            return bool(result) and result[0]["value"][1] == "1"

        wait_until(scraped, "Prometheus to scrape the launcher's restart count")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
