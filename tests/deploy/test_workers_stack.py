"""`make run WORKERS=3`: the crawler as a control API and three workers on Redis, under the launcher.

One launcher (deploy/launch.py with --workers 3, what `make run WORKERS=3` runs) on shifted free
ports starts redis-server, websim, the fault proxy, dedup, the control API with --redis, three
`python -m services.crawler worker` processes and Prometheus. Then, as a user would: the control
API lists three live workers and an owner for every partition; a crawl of websim started there
finishes; websim's own request log judges it (0 robots and 0 politeness violations); Prometheus
scrapes each worker; a worker killed with SIGKILL is restarted by the launcher (its restart
counter goes to 1) and takes partitions again; Ctrl-C stops everything and leaves nothing running.
Every wait is bounded in time (and reading the launcher's output in lines).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from deploy.topology import ROOT, local_services
from libs.testkit.net import free_port_offset
from tests.conftest import free_port, need_binary

pytestmark = pytest.mark.slow

WORKERS = 3
MIN_DELAY = 0.2  # the crawl's politeness floor, and what websim's judge holds it to
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.25) -> T:
    """probe() until it returns something truthy; fail naming `what` (and the last value) after timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


class Launcher:
    """The launcher as a child: its output read by a thread, so no wait can block on a pipe."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.launch", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, needle: str, timeout: float, max_lines: int = 500) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(max_lines):
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
            if needle in line:
                return
        pytest.fail(f"launcher never printed {needle!r} within {timeout:.0f}s:\n{''.join(self.output)}")


class Stack:
    def __init__(self, launcher: Launcher, offset: int, metrics_port: int, var_dir: Path) -> None:
        self.launcher, self.offset, self.var_dir = launcher, offset, var_dir
        self.supervisor = f"http://127.0.0.1:{metrics_port}"
        ports = {s.name: s.http_port for s in local_services(workers=WORKERS)}
        self.urls = {name: f"http://127.0.0.1:{port + offset}" for name, port in ports.items() if port}
        self.http = httpx.Client(timeout=15)

    def get(self, service: str, path: str, **params: Any) -> Any:
        response = self.http.get(f"{self.urls[service]}{path}", params=params)
        response.raise_for_status()
        return response.json()

    def services(self) -> dict[str, Any]:
        return self.http.get(f"{self.supervisor}/services").json()

    def workers(self) -> dict[str, Any] | None:
        try:
            return self.get("crawler", "/v1/workers")
        except httpx.HTTPError:
            return None


def worker_names() -> set[str]:
    return {f"crawler-worker-{i}" for i in range(1, WORKERS + 1)}


def every_partition_owned(view: dict[str, Any] | None, alive: set[str]) -> bool:
    """Every partition has an owner among `alive` live workers, and each of them owns one."""
    if not view or not view["partitions"]:
        return False
    live = {w["worker"] for w in view["workers"] if w["alive"]}
    owners = {p["owner"] for p in view["partition_owners"]}
    return alive <= live and owners == alive


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    need_binary("redis-server")
    need_binary("prometheus")
    plan = local_services(workers=WORKERS)
    offset = free_port_offset([p for s in plan for p in s.ports], start=3000, step=211)
    metrics_port = free_port()
    launcher = Launcher(
        [
            "--workers",
            str(WORKERS),
            "--only",
            "crawler,crawler-worker,prometheus",
            "--port-offset",
            str(offset),
            "--metrics-port",
            str(metrics_port),
            "--var-dir",
            str(tmp_path),
        ]
    )
    children: list[psutil.Process] = []
    try:
        launcher.wait_line("stack up", timeout=240)
        children = psutil.Process(launcher.proc.pid).children(recursive=True)
        stack = Stack(launcher, offset, metrics_port, tmp_path)
        yield stack
        stack.http.close()
        children = psutil.Process(launcher.proc.pid).children(recursive=True)  # restarted ones too
        launcher.proc.send_signal(signal.SIGINT)
        assert launcher.proc.wait(timeout=60) == 0, "".join(launcher.output)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left running after Ctrl-C: {alive}"
    finally:
        if launcher.proc.poll() is None:
            launcher.proc.kill()
            launcher.proc.wait()
        for child in children:
            if child.is_running():
                child.kill()


def test_three_workers_crawl_politely_and_a_killed_worker_is_restarted(stack: Stack):
    # -- the launcher runs three workers, each its own supervised child ------------------------
    services = stack.services()
    assert worker_names() <= set(services), services
    for name in worker_names():
        assert services[name]["up"] and services[name]["restarts"] == 0, services[name]
    banner = "".join(stack.launcher.output)
    for name in worker_names():
        assert f"worker id {name}" in banner, banner

    # -- the control API sees them all, and every partition has an owner among them ------------
    view = wait_for(
        "3 live workers owning every partition",
        lambda: (v := stack.workers()) and every_partition_owned(v, worker_names()) and v,
        timeout=90,
    )
    assert view["partitions"] == len(view["partition_owners"]) > 0

    # -- a crawl through the control API, run by the workers, judged by websim's log ---------
    seeds = [f"http://h{i:04d}.sim.test/" for i in range(8)]
    body = {
        "seeds": seeds,
        "scope": ["*.sim.test"],
        "max_pages": 200,
        "max_depth": 2,
        "politeness": {"min_delay": MIN_DELAY},
    }
    started = stack.http.post(f"{stack.urls['crawler']}/v1/crawls", json=body)
    assert started.status_code == 201, started.text
    crawl_id = started.json()["crawl_id"]
    status = wait_for(
        "the crawl to finish",
        lambda: (
            (s := stack.get("crawler", f"/v1/crawls/{crawl_id}"))["state"] not in ("pending", "running") and s
        ),
        timeout=240,
        every=1.0,
    )
    assert status["state"] == "finished", status
    judge = stack.get("websim", "/judge", min_delay=MIN_DELAY)
    assert judge["pages_fetched"] >= len(seeds), judge
    assert judge["robots_violations"] == 0, judge
    assert judge["politeness_violations"] == 0, judge

    # -- Prometheus scrapes each worker (job crawler-worker) ------------------------------------
    def workers_scraped() -> dict[str, str] | None:
        result = stack.get("prometheus", "/api/v1/query", query='up{job="crawler-worker"}')["data"]["result"]
        up = {r["metric"]["instance"]: r["value"][1] for r in result}
        return up if len(up) == WORKERS and set(up.values()) == {"1"} else None

    wait_for("Prometheus to scrape all 3 workers", workers_scraped, timeout=60, every=1.0)

    # -- kill -9 one worker: the launcher restarts it, the others are untouched ----------------
    before = stack.services()
    victim = "crawler-worker-2"
    os.kill(before[victim]["pid"], signal.SIGKILL)
    after = wait_for(
        f"{victim} restarted and healthy",
        lambda: (s := stack.services())[victim]["up"] and s[victim]["pid"] != before[victim]["pid"] and s,
        timeout=90,
    )
    assert after[victim]["restarts"] == 1, after[victim]
    for other in worker_names() - {victim}:
        assert after[other]["pid"] == before[other]["pid"] and after[other]["restarts"] == 0, after[other]
    metrics = stack.http.get(f"{stack.supervisor}/metrics").text
    assert f'launcher_service_restarts_total{{service="{victim}"}} 1.0' in metrics
    # The restarted worker joins again under its own id; the three share every partition.
    wait_for(
        "the restarted worker to own partitions again",
        lambda: every_partition_owned(stack.workers(), worker_names()),
        timeout=90,
    )
    assert stack.services()[victim]["restarts"] == 1  # and it stayed up
