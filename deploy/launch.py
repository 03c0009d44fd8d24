"""`make run`: the compose topology as local processes on loopback, stopped cleanly on Ctrl-C.

    python -m deploy.launch [--redis] [--only websim,crawler] [--plan] [--duration SECONDS]

Services start in dependency order (compose `depends_on`); each must pass its health check
before the next starts. Every child runs in its own process group with its output in
var/logs/<service>.log. Ctrl-C or SIGTERM stops them in reverse order (SIGTERM, then SIGKILL
after a grace period); if a child dies on its own, the whole stack is stopped and the launcher
exits 1 with the tail of that child's log, so nothing is ever left running half-started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from argparse import Namespace
from pathlib import Path

from deploy.topology import ROOT, Service, load_compose, local_services, write_localised_files
from libs.service.cli import EXIT_USAGE, ArgumentParser, UsageError

HEALTH_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0


class StackError(RuntimeError):
    """A service failed to start or died; the message says which and why."""


def start_order(plan: list[Service], compose: dict) -> list[Service]:
    """Topological order over compose depends_on (ties keep compose order)."""
    by_name = {s.name: s for s in plan}
    ordered: list[Service] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in path:
            raise StackError(f"depends_on cycle: {' -> '.join((*path, name))}")
        deps = compose["services"][name].get("depends_on", [])
        for dep in deps if isinstance(deps, list) else list(deps):
            visit(dep, (*path, name))
        seen.add(name)
        ordered.append(by_name[name])

    for s in plan:
        visit(s.name, ())
    return ordered


def is_healthy(service: Service) -> bool:
    port = service.http_port
    if port is None:
        return True
    try:
        if service.health_path is None:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        url = f"http://127.0.0.1:{port}{service.health_path}"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class Stack:
    """The running children; stop() is idempotent and leaves nothing behind."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, service: Service, names: set[str]) -> None:
        write_localised_files(service, names)
        for _, local in service.paths:  # volumes: created on first use, as docker does
            local.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{service.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        env = {**os.environ, **service.env, "PYTHONUNBUFFERED": "1"}
        self.procs[service.name] = subprocess.Popen(
            service.argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def wait_healthy(self, service: Service, timeout: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        proc = self.procs[service.name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(
                    f"{service.name} exited with {proc.returncode} while starting\n"
                    + self.log_tail(service.name)
                )
            if is_healthy(service):
                return
            time.sleep(0.2)
        raise StackError(f"{service.name} not healthy after {timeout:.0f}s\n" + self.log_tail(service.name))

    def dead(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        return "\n".join(f"  {name} | {line}" for line in text)

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE_S
        for name, proc in reversed(list(self.procs.items())):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop within {STOP_GRACE_S:.0f}s: killing it", file=sys.stderr)
            try:  # also reap anything the child left in its group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        self.procs.clear()


def prometheus_ui(port: int) -> str:
    """The prefix of Prometheus' status pages: Debian's package serves only the classic UI
    (/classic/targets; /targets is a 404), the upstream image the new one (/targets)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/classic/targets", timeout=2) as resp:
            return "/classic" if resp.status == 200 else ""
    except OSError:
        return ""


def describe(service: Service) -> str:
    port = service.http_port
    if service.name == "prometheus" and port is not None:
        ui = f"http://127.0.0.1:{port}{prometheus_ui(port)}"
        return f"{ui}/targets  (alerts: {ui}/alerts)"
    if service.name == "redis":
        return f"redis://127.0.0.1:{port}/0"
    if service.name == "websim":
        return f"http://127.0.0.1:{port}  (admin: /log /judge /truth /faults, metrics: /metrics)"
    if service.health_path in ("/healthz", "/readyz"):
        return f"http://127.0.0.1:{port}  (API docs: /docs, metrics: /metrics)"
    return f"http://127.0.0.1:{port}"


def parse_args(argv: list[str] | None) -> Namespace:
    parser = ArgumentParser(prog="python -m deploy.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--redis", action="store_true", help="also start redis-server and use it")
    parser.add_argument("--only", default="", help="comma-separated services to start (default: all)")
    parser.add_argument("--plan", action="store_true", help="print what would run and exit")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop by itself after this many seconds (tests, demos)"
    )
    parser.add_argument("--port-offset", type=int, default=0, help="add this to every published port")
    parser.add_argument("--var-dir", type=Path, default=ROOT / "var", help="state and logs (default: var/)")
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration: expected a positive number of seconds, got {args.duration}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    compose = load_compose()
    plan = local_services(
        redis=args.redis, var_dir=args.var_dir, port_offset=args.port_offset, compose=compose
    )
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    if unknown := wanted - {s.name for s in plan}:
        print(f"error: --only: unknown service(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if wanted:
        plan = [s for s in plan if s.name in wanted]
    order = start_order(
        plan, {"services": {s.name: compose["services"][s.name] for s in plan}} if wanted else compose
    )
    if args.plan:
        for s in order:
            print(f"{s.name:<11} {'skip: ' + s.skip if s.skip else ' '.join(s.argv)}")
        return 0

    stack = Stack(args.var_dir / "logs")
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    names = set(compose["services"])
    try:
        for service in order:
            if service.skip:
                print(f"  {service.name:<11} skipped ({service.skip})")
                continue
            if stopping:
                return 130
            print(f"  {service.name:<11} starting ...", flush=True)
            stack.start(service, names)
            stack.wait_healthy(service)
            print(f"  {service.name:<11} {describe(service)}", flush=True)
        print(f"\nstack up; logs in {stack.log_dir}/. Ctrl-C stops everything.", flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stopping and (deadline is None or time.monotonic() < deadline):
            if (name := stack.dead()) is not None:
                raise StackError(f"{name} exited unexpectedly\n" + stack.log_tail(name))
            time.sleep(0.2)
        return 0
    except StackError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack.procs:
            print("\nstopping ...", flush=True)
        stack.stop()
        if stack.procs == {}:
            print("stopped; nothing left running.")


if __name__ == "__main__":
    sys.exit(main())
