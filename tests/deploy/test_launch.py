"""`make run`'s launcher starts what exists, supervises it by compose `restart:` policy, stops on
Ctrl-C and leaves nothing running."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import yaml

from deploy.launch import (
    METRICS_PORT,
    RestartPolicy,
    StackError,
    add_launcher_scrape_job,
    backoff_s,
    with_dependencies,
)
from deploy.topology import ROOT, load_compose, local_services, write_localised_files
from tests.conftest import free_port, need_binary


def launcher(*args: str, var_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "deploy.launch", "--var-dir", str(var_dir), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float = 60.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    pytest.fail(f"launcher never printed {needle!r}; output:\n{''.join(lines)}")


def test_plan_lists_every_service():
    out = subprocess.run(
        [sys.executable, "-m", "deploy.launch", "--plan"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for name in ("redis", "websim", "crawler", "dedup", "inference", "prometheus", "grafana"):
        assert name in out


@pytest.mark.parametrize(
    ("args", "named"),
    [(["--only", "nope"], "nope"), (["--workers", "-1"], "--workers"), (["--workers", "x"], "--workers")],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], named: str):
    result = subprocess.run(
        [sys.executable, "-m", "deploy.launch", *args, "--plan"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and named in result.stderr


def test_plan_with_workers_names_each_replica_and_only_selects_them():
    def plan(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "deploy.launch", "--plan", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout

    full = plan("--workers", "2")
    for i in (1, 2):
        assert re.search(rf"^crawler-worker-{i} .*--worker-id crawler-worker-{i}\b", full, re.M), full
    assert "crawler-worker-3" not in full and not re.search(r"^redis\s+skip", full, re.M)
    one = plan("--workers", "2", "--only", "crawler-worker-2")  # its dependencies, not its sibling
    assert "crawler-worker-2" in one and "crawler-worker-1" not in one and re.search(r"^websim ", one, re.M)
    both = plan("--workers", "2", "--only", "crawler-worker", "--no-deps")
    assert [line.split()[0] for line in both.splitlines()] == ["crawler-worker-1", "crawler-worker-2"]
    assert re.search(r"^crawler-worker\s+skip: only with WORKERS=N", plan(), re.M)


def test_ctrl_c_stops_every_child(tmp_path: Path):
    need_binary("prometheus")
    offset = free_port() - 9090
    proc = launcher("--only", "prometheus", "--port-offset", str(offset), var_dir=tmp_path)
    try:
        wait_for_line(proc, "stack up")
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the launcher started nothing"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()


# -- supervision: compose `restart:` policies, with real processes ---------------------------

METRIC = re.compile(r'^(launcher_service_\w+)\{service="(\w+)"\} ([0-9.e+-]+)$', re.M)


def scrape(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(m[1], m[2]): float(m[3]) for m in METRIC.finditer(text)}


def services(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/services", timeout=5) as resp:
        return json.load(resp)


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_until(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def child_serving(launcher_pid: int, port: int) -> psutil.Process:
    for child in psutil.Process(launcher_pid).children(recursive=True):
        if str(port) in child.cmdline():
            return child
    pytest.fail(f"no child of the launcher serves port {port}")


def http_service(port: int, restart: str) -> dict:
    return {
        "restart": restart,
        "command": ["python", "-m", "http.server", str(port), "--bind", "0.0.0.0"],
        "ports": [f"{port}:{port}"],
        "healthcheck": {"test": ["CMD", "curl", "-f", f"http://127.0.0.1:{port}/"]},
    }


def test_restart_policy_parsing_and_decisions():
    assert RestartPolicy.parse(False) == RestartPolicy("no")  # YAML 1.1: a bare `no` is false
    assert RestartPolicy.parse("on-failure:3") == RestartPolicy("on-failure", 3)
    with pytest.raises(StackError, match="restart"):
        RestartPolicy.parse("sometimes")
    assert not RestartPolicy.parse("no").restarts(-9, 0)
    assert RestartPolicy.parse("always").restarts(0, 100)
    assert RestartPolicy.parse("unless-stopped").restarts(-9, 100)
    on_failure = RestartPolicy.parse("on-failure:2")
    assert on_failure.restarts(1, 1) and not on_failure.restarts(1, 2) and not on_failure.restarts(0, 0)
    delays = [backoff_s(n) for n in range(10)]
    assert delays[:3] == [0.5, 1.0, 2.0] and max(delays) == 30.0 and delays == sorted(delays)


def test_only_starts_the_dependencies_a_service_needs_unless_no_deps():
    def plan(*args: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-m", "deploy.launch", "--plan", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    compose = load_compose()
    crawler = plan("--only", "crawler")
    assert crawler[-1] == "crawler"
    assert set(crawler) == with_dependencies({"crawler"}, compose) and "inference" not in crawler
    assert plan("--only", "websim,crawler", "--no-deps") == ["websim", "crawler"]


def test_a_killed_child_is_restarted_and_the_others_keep_running(tmp_path: Path):
    always, never, metrics = free_port(), free_port(), free_port()
    compose = {"services": {"a": http_service(always, "always"), "b": http_service(never, "no")}}
    compose_file = tmp_path / "compose.yml"
    compose_file.write_text(yaml.safe_dump(compose))
    args = ("--compose-file", str(compose_file), "--metrics-port", str(metrics))
    proc = launcher(*args, var_dir=tmp_path)
    try:
        wait_for_line(proc, "stack up")
        assert scrape(metrics)[("launcher_service_up", "a")] == 1
        a, b = child_serving(proc.pid, always), child_serving(proc.pid, never)

        assert services(metrics)["a"]["pid"] == a.pid and services(metrics)["b"]["restart"] == "no"

        a.kill()  # SIGKILL: restart: always brings it back
        wait_until(lambda: scrape(metrics)[("launcher_service_restarts_total", "a")] == 1, "a restart")
        wait_until(lambda: scrape(metrics)[("launcher_service_up", "a")] == 1, "a healthy again")
        assert answers(always)
        now = services(metrics)["a"]
        assert now["up"] and now["restarts"] == 1 and now["last_recovery_s"] >= 0.5  # the first backoff
        assert now["pid"] == child_serving(proc.pid, always).pid != a.pid
        assert b.is_running() and answers(never), "the other service must not be touched"

        b.kill()  # restart: "no" leaves it down, and the launcher keeps supervising the rest
        wait_until(lambda: scrape(metrics)[("launcher_service_exits_total", "b")] == 1, "b's exit")
        series = scrape(metrics)
        assert series[("launcher_service_up", "b")] == 0
        assert series[("launcher_service_restarts_total", "b")] == 0
        assert not answers(never) and answers(always) and proc.poll() is None
        assert services(metrics)["b"]["pid"] is None and not services(metrics)["b"]["up"]

        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        _gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "logs").iterdir()
    assert {p.name for p in log} == {"a.log", "b.log"}


def test_the_local_prometheus_scrapes_the_launcher(tmp_path: Path):
    prometheus = next(s for s in local_services(var_dir=tmp_path) if s.name == "prometheus")
    write_localised_files(prometheus, set(load_compose()["services"]))
    add_launcher_scrape_job(prometheus, 9123)
    (config,) = prometheus.files.values()
    jobs = {j["job_name"]: j for j in yaml.safe_load(config.read_text())["scrape_configs"]}
    assert jobs["launcher"]["static_configs"] == [{"targets": ["127.0.0.1:9123"]}]
    result = subprocess.run(
        [need_binary("promtool"), "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_taken_default_metrics_port_does_not_stop_the_stack(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        offset = busy.getsockname()[1] - METRICS_PORT  # 9097 + offset is taken
        for _ in range(100):  # bounded: a service port that stays valid and free once shifted
            port = free_port()
            if 1024 <= port - offset <= 65535:
                break
        compose = {"services": {"a": http_service(port - offset, "always")}}
        compose_file = tmp_path / "compose.yml"
        compose_file.write_text(yaml.safe_dump(compose))
        proc = launcher("--compose-file", str(compose_file), "--port-offset", str(offset), var_dir=tmp_path)
        try:
            lines = wait_for_line(proc, "stack up")
            assert any("is taken" in line for line in lines), "".join(lines)
            supervisor = int(re.search(r"supervisor: http://127\.0\.0\.1:(\d+)", lines[-1])[1])
            assert supervisor != busy.getsockname()[1]
            assert scrape(supervisor)[("launcher_service_up", "a")] == 1
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_port_already_taken_is_refused_with_one_clear_error(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()  # would answer a TCP health check: the launcher must not be fooled
        port = taken.getsockname()[1]
        compose = {"services": {"a": http_service(port, "always")}}
        compose_file = tmp_path / "compose.yml"
        compose_file.write_text(yaml.safe_dump(compose))
        args = ["--compose-file", str(compose_file), "--metrics-port", str(free_port())]
        result = subprocess.run(
            [sys.executable, "-m", "deploy.launch", *args, "--var-dir", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} already in use" in result.stderr
    assert "starting" not in result.stdout  # refused before anything started
