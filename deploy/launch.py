"""`make run`: the compose topology as local processes on loopback, supervised like compose does.

    python -m deploy.launch [--redis] [--workers N] [--only websim,crawler] [--no-deps] [--direct]
                            [--plan] [--duration SECONDS] [--port-offset N] [--metrics-port PORT]

Workers. `--workers N` (`make run WORKERS=N`; it implies --redis) runs the crawler as its control
API on Redis plus N worker processes, crawler-worker-1..N: compose's `crawler-worker` service
(3 replicas there), each with --worker-id crawler-worker-<i>, its data under
var/crawler-worker-<i>/ and its metrics on 127.0.0.1:9101+i-1 (+ offset), scraped by the local
Prometheus as job crawler-worker. Each is a child like the others: supervised by the compose
restart policy and listed on /services under its own name. `--only crawler-worker` names them all.

Start-up. Services start in dependency order (compose `depends_on`); each must pass its health
check before the next starts. `--only a,b` starts those services and, as `docker compose up a b`
does, the services they depend on (so `--only crawler` also starts websim, dedup and the fault
proxy); `--no-deps` starts only the named ones. A dependency that is not run locally (redis
without --redis, a binary that is not installed) is skipped, never an error. A service that dies
or never gets healthy during start-up stops the whole stack: the launcher exits 1 with the tail
of its log, so nothing is left running half-started. A service whose port is already taken (a
second `make run`) is refused before it starts: its health check would pass against the other.

Supervision. Once the stack is up, each child is supervised by its compose `restart:` policy:
`no` leaves a dead child down; `always` and `unless-stopped` restart it whatever its exit status;
`on-failure[:N]` restarts it only after a non-zero exit (at most N times in a row). Restarts back
off exponentially (0.5 s, 1 s, 2 s, ... capped at 30 s; the count of consecutive restarts resets
once a child has stayed up 10 s). Every exit and restart is logged on the launcher's output and
counted on its own /metrics (127.0.0.1:9097 + port offset, or a free port when that one is taken
and --metrics-port was not given; scraped by the local Prometheus as job `launcher`):

    launcher_service_up{service}              1 while the child runs and has passed its health check
    launcher_service_restarts_total{service}  restarts the launcher made
    launcher_service_exits_total{service}     exits it saw (killed, crashed or exited)

`GET /services` on the same port answers JSON {service: {pid, up, restarts, restart,
restart_pending, last_recovery_s, log}}: a kill drill finds its victim's pid there and waits
there for the restarted child to be up (a new pid with "up": true); last_recovery_s is the time
from its death to its health check passing again.

The other children keep running meanwhile, and Prometheus (itself a child) keeps scraping: a dead
target shows `up == 0` until it is back. A frozen (SIGSTOPped) child is alive: it is not restarted.

Faults. Services reach each other only through the fault proxy (compose service `toxiproxy`:
Toxiproxy's image in compose, `python -m deploy.faultproxy` here, both on
deploy/toxiproxy/proxies.json), so its HTTP API on 127.0.0.1:8474 + offset can slow, cut or
reset any hop while the stack runs; see loadtests/drills/README-faults.md. Prometheus scrapes
the services directly, never through it. It is on by default (the drills need it; it costs one
loopback hop per connection); `--direct` leaves it out and points every hop straight at its
service. A restarted fault proxy comes back with the proxies of its file and no toxics, as a
restarted Toxiproxy container does.

Every child runs in its own process group with its output appended to var/logs/<service>.log.
Ctrl-C or SIGTERM stops them in reverse start order (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from argparse import Namespace
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from deploy.topology import COMPOSE_FILE, ROOT, Service, load_compose, local_services, write_localised_files
from libs.service.cli import EXIT_USAGE, ArgumentParser, UsageError

HEALTH_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
METRICS_PORT = 9097
RESTART_BASE_S = 0.5  # first restart delay; doubled for each consecutive restart
RESTART_CAP_S = 30.0
RESTART_RESET_AFTER_S = 10.0  # up this long: the next failure counts as the first again
TICK_S = 0.2
POLICIES = ("no", "always", "on-failure", "unless-stopped")
MAX_WORKERS = 64  # one loopback metrics port each (9101 ...); more is a typo, not a plan


class StackError(RuntimeError):
    """A service failed to start or died during start-up; the message says which and why."""


# -- restart policy ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RestartPolicy:
    """A compose `restart:` value: no | always | on-failure[:max-retries] | unless-stopped."""

    name: str = "no"
    max_retries: int | None = None  # on-failure only; None = unbounded

    @classmethod
    def parse(cls, value: object) -> RestartPolicy:
        if value is None or value is False:  # YAML 1.1 reads a bare `no` as false
            return cls("no")
        text = str(value).strip()
        name, _, count = text.partition(":")
        if name not in POLICIES or (count and (name != "on-failure" or not count.isdigit())):
            raise StackError(f"restart: expected one of {', '.join(POLICIES)} (on-failure[:N]), got {text!r}")
        return cls(name, int(count) if count else None)

    def restarts(self, returncode: int, consecutive: int) -> bool:
        """Whether a child that exited with `returncode` after `consecutive` restarts comes back."""
        if self.name in ("always", "unless-stopped"):
            return True
        if self.name == "on-failure":
            return returncode != 0 and (self.max_retries is None or consecutive < self.max_retries)
        return False


def backoff_s(consecutive: int) -> float:
    """Delay before restart number `consecutive + 1` of a run of failures."""
    return min(RESTART_CAP_S, RESTART_BASE_S * 2 ** min(consecutive, 32))


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


# -- plan -------------------------------------------------------------------------------------


def _deps(compose: dict, name: str) -> list[str]:
    deps = compose["services"][name].get("depends_on", [])
    return list(deps) if isinstance(deps, list | dict) else []


def with_dependencies(wanted: set[str], compose: dict) -> set[str]:
    """`wanted` and everything it depends on, transitively (what `docker compose up` starts)."""
    result: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name not in result:
            result.add(name)
            todo.extend(_deps(compose, name))
    return result


def group_of(service: Service) -> str:
    """The compose service a local process runs (a replica crawler-worker-2 runs crawler-worker)."""
    return service.group or service.name


def start_order(plan: list[Service], compose: dict) -> list[Service]:
    """Topological order over compose depends_on (ties keep compose order; replicas in order).

    A dependency outside `plan` (not asked for with --only --no-deps) is not waited for.
    """
    by_group: dict[str, list[Service]] = {}
    for s in plan:
        by_group.setdefault(group_of(s), []).append(s)
    ordered: list[Service] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in seen or name not in by_group:
            return
        if name in path:
            raise StackError(f"depends_on cycle: {' -> '.join((*path, name))}")
        for dep in _deps(compose, name):
            visit(dep, (*path, name))
        seen.add(name)
        ordered.extend(by_group[name])

    for s in plan:
        visit(group_of(s), ())
    return ordered


def select(plan: list[Service], wanted: set[str], compose: dict, no_deps: bool) -> list[Service]:
    """--only: the services named (a replica by its own name, all replicas by their group's),
    and unless no_deps the services they depend on, as `docker compose up a b` does."""
    named = {group_of(s) for s in plan if s.name in wanted or group_of(s) in wanted}
    deps = set() if no_deps else with_dependencies(named, compose)
    # A replica named alone (crawler-worker-2) brings its dependencies, not its sibling replicas.
    alone = {group_of(s) for s in plan if s.name in wanted and s.name != group_of(s)} - wanted
    return [s for s in plan if s.name in wanted or group_of(s) in wanted or (group_of(s) in deps - alone)]


def port_in_use(port: int) -> bool:
    """Something already listens on 127.0.0.1:port (a TIME_WAIT leftover does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


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


# -- metrics ----------------------------------------------------------------------------------


class LauncherMetrics:
    """The launcher's own series, served on /metrics from a daemon thread."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.up = Gauge(
            "launcher_service_up",
            "1 while the service's process runs and has passed its health check since it started",
            ["service"],
            registry=self.registry,
        )
        self.restarts = Counter(
            "launcher_service_restarts_total",
            "Restarts the launcher made under the service's compose restart policy",
            ["service"],
            registry=self.registry,
        )
        self.exits = Counter(
            "launcher_service_exits_total",
            "Times the service's process exited or was killed while the stack was up",
            ["service"],
            registry=self.registry,
        )
        self.server: ThreadingHTTPServer | None = None

    def register(self, name: str) -> None:
        self.up.labels(name).set(0)
        self.restarts.labels(name)
        self.exits.labels(name)

    def serve(self, port: int, services: Callable[[], dict] = dict) -> None:
        """/metrics (Prometheus), /services (JSON: each child's pid, up, restarts, policy), /healthz."""
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/metrics":
                    body, kind = generate_latest(registry), CONTENT_TYPE_LATEST
                elif path == "/services":
                    body, kind = json.dumps(services(), indent=1).encode(), "application/json"
                elif path == "/healthz":
                    body, kind = b"ok\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="launcher-metrics", daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def add_launcher_scrape_job(service: Service, metrics_port: int) -> None:
    """Add the launcher itself to the localised Prometheus config (compose has no launcher)."""
    for target in service.files.values():
        config = yaml.safe_load(target.read_text(encoding="utf-8"))
        if not isinstance(config, dict) or "scrape_configs" not in config:
            continue
        config["scrape_configs"].append(
            {"job_name": "launcher", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        )
        target.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


# -- supervision ------------------------------------------------------------------------------


@dataclass
class Child:
    """One supervised service: its current process and where it is in its restart cycle."""

    service: Service
    policy: RestartPolicy
    proc: subprocess.Popen | None = None
    healthy: bool = False
    started_at: float = 0.0
    consecutive: int = 0  # restarts since it last stayed up RESTART_RESET_AFTER_S
    restart_at: float | None = None  # when a pending restart is due
    restarts: int = 0
    exited_at: float | None = None  # when it last died, until it is healthy again
    last_recovery_s: float | None = None  # from its last death to healthy again


class Stack:
    """The running children; stop() is idempotent and leaves nothing behind."""

    def __init__(
        self, log_dir: Path, metrics: LauncherMetrics | None = None, metrics_port: int | None = None
    ) -> None:
        self.log_dir = log_dir
        self.children: dict[str, Child] = {}  # in start order
        self.metrics = metrics or LauncherMetrics()
        self.metrics_port = metrics_port  # added to the local Prometheus' scrape jobs when set
        self.status: dict[str, dict] = {}  # replaced whole on each change; read by /services

    def publish(self) -> None:
        """Snapshot each child's state for /services (read from the metrics thread)."""
        self.status = {
            name: {
                "pid": child.proc.pid if child.proc is not None else None,
                "up": child.healthy,
                "restarts": child.restarts,
                "restart": child.policy.name,
                "restart_pending": child.restart_at is not None,
                "last_recovery_s": child.last_recovery_s,
                "log": str(self.log_dir / f"{name}.log"),
            }
            for name, child in self.children.items()
        }

    @property
    def procs(self) -> dict[str, subprocess.Popen]:
        return {n: c.proc for n, c in self.children.items() if c.proc is not None}

    def say(self, name: str, text: str) -> None:
        print(f"  {name:<11} {text}", flush=True)

    def start(self, service: Service, names: set[str], policy: RestartPolicy | None = None) -> None:
        child = self.children.get(service.name)
        if child is None:
            policy = policy or RestartPolicy.parse(service.compose.get("restart"))
            child = self.children[service.name] = Child(service, policy)
            self.metrics.register(service.name)
        write_localised_files(service, names)
        if service.name == "prometheus" and self.metrics_port is not None:
            add_launcher_scrape_job(service, self.metrics_port)
        for _, local in service.paths:  # volumes: created on first use, as docker does
            local.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{service.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        env = {**os.environ, **service.env, "PYTHONUNBUFFERED": "1"}
        child.proc = subprocess.Popen(
            service.argv,
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        child.healthy = False
        child.started_at = time.monotonic()
        child.restart_at = None
        self.publish()

    def wait_healthy(self, service: Service, timeout: float = HEALTH_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        child = self.children[service.name]
        assert child.proc is not None
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise StackError(
                    f"{service.name} {exit_reason(child.proc.returncode)} while starting\n"
                    + self.log_tail(service.name)
                )
            if is_healthy(service):
                self.mark_healthy(child)
                return
            time.sleep(TICK_S)
        raise StackError(f"{service.name} not healthy after {timeout:.0f}s\n" + self.log_tail(service.name))

    def mark_healthy(self, child: Child) -> None:
        child.healthy = True
        self.metrics.up.labels(child.service.name).set(1)
        self.publish()

    def supervise_once(self, names: set[str]) -> None:
        """One supervision tick: notice exits, schedule and make restarts, track health."""
        now = time.monotonic()
        for name, child in self.children.items():
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                self.on_exit(child, proc.returncode, now)
            elif child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self.metrics.restarts.labels(name).inc()
                self.say(name, f"restarting (restart {child.restarts})")
                try:
                    self.start(child.service, names)
                except OSError as exc:  # e.g. its binary is gone: try again later, with backoff
                    child.restart_at = now + backoff_s(child.consecutive)
                    child.consecutive += 1
                    self.say(name, f"cannot start: {exc}")
            elif proc is not None and not child.healthy and is_healthy(child.service):
                self.mark_healthy(child)
                if child.exited_at is not None:
                    child.last_recovery_s = round(time.monotonic() - child.exited_at, 3)
                    child.exited_at = None
                    self.publish()
                took = f"{child.last_recovery_s or 0:.1f}s after it went down"
                self.say(name, f"up again ({took}, restart {child.restarts}): {describe(child.service)}")
            elif child.healthy and child.consecutive and now - child.started_at >= RESTART_RESET_AFTER_S:
                child.consecutive = 0

    def on_exit(self, child: Child, returncode: int, now: float) -> None:
        name = child.service.name
        assert child.proc is not None
        try:  # reap whatever the child left in its process group
            os.killpg(child.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child.proc = None
        child.healthy = False
        child.exited_at = now
        self.metrics.up.labels(name).set(0)
        self.metrics.exits.labels(name).inc()
        self.publish()
        if not child.policy.restarts(returncode, child.consecutive):
            self.say(name, f"{exit_reason(returncode)}; left down (restart: {child.policy.name})")
            print(self.log_tail(name, 5), flush=True)
            return
        delay = backoff_s(child.consecutive)
        child.consecutive += 1
        child.restart_at = now + delay
        self.publish()
        policy = child.policy.name
        self.say(name, f"{exit_reason(returncode)}; restarting in {delay:.1f}s (restart: {policy})")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.log_dir / f"{name}.log"
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        return "\n".join(f"  {name} | {line}" for line in text)

    def stop(self) -> None:
        procs = self.procs
        for proc in reversed(list(procs.values())):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + STOP_GRACE_S
        for name, proc in reversed(list(procs.items())):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop within {STOP_GRACE_S:.0f}s: killing it", file=sys.stderr)
            try:  # also reap anything the child left in its group
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for child in self.children.values():
            child.proc, child.restart_at, child.healthy = None, None, False
            self.metrics.up.labels(child.service.name).set(0)
        self.publish()


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
    if service.group == "crawler-worker":
        return f"http://127.0.0.1:{port}/metrics  (worker id {service.name}; all: crawler /v1/workers)"
    if service.name == "toxiproxy":
        return f"http://127.0.0.1:{port}  (Toxiproxy API: /proxies; proxied ports {service.ports[1:]})"
    if service.health_path in ("/healthz", "/readyz"):
        return f"http://127.0.0.1:{port}  (API docs: /docs, metrics: /metrics)"
    return f"http://127.0.0.1:{port}"


def parse_args(argv: list[str] | None) -> Namespace:
    parser = ArgumentParser(prog="python -m deploy.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--redis", action="store_true", help="also start redis-server and use it")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="run the crawler as N workers on Redis (crawler-worker-1..N; implies --redis)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated services to start, with their dependencies (default: all)"
    )
    parser.add_argument("--no-deps", action="store_true", help="with --only: do not start dependencies")
    parser.add_argument(
        "--direct", action="store_true", help="no fault proxy: services reach each other directly"
    )
    parser.add_argument("--plan", action="store_true", help="print what would run and exit")
    parser.add_argument(
        "--duration", type=float, default=None, help="stop by itself after this many seconds (tests, demos)"
    )
    parser.add_argument("--port-offset", type=int, default=0, help="add this to every published port")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help=f"launcher /metrics (default {METRICS_PORT} + offset)"
    )
    parser.add_argument("--var-dir", type=Path, default=ROOT / "var", help="state and logs (default: var/)")
    # For tests of the launcher itself: supervise a stack described by another compose file.
    parser.add_argument("--compose-file", type=Path, default=COMPOSE_FILE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration: expected a positive number of seconds, got {args.duration}")
    if not 0 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers: expected 0-{MAX_WORKERS}, got {args.workers}")
    args.metrics_port_given = args.metrics_port is not None
    if args.metrics_port is None:
        args.metrics_port = METRICS_PORT + args.port_offset
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port: expected a port 0-65535, got {args.metrics_port}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        compose = load_compose(args.compose_file)
        policies = {n: RestartPolicy.parse(s.get("restart")) for n, s in compose["services"].items()}
    except (UsageError, StackError, OSError, yaml.YAMLError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    plan = local_services(
        redis=args.redis,
        var_dir=args.var_dir,
        port_offset=args.port_offset,
        compose=compose,
        direct=args.direct,
        workers=args.workers,
    )
    wanted = {n.strip() for n in args.only.split(",") if n.strip()}
    if unknown := wanted - {s.name for s in plan} - {group_of(s) for s in plan}:
        print(f"error: --only: unknown service(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return EXIT_USAGE
    if wanted:
        plan = select(plan, wanted, compose, args.no_deps)
    order = start_order(plan, compose)
    if args.plan:
        for s in order:
            what = "skip: " + s.skip if s.skip else " ".join(s.argv)
            print(f"{s.name:<11} {what}" + ("" if s.skip else f"  [restart: {policies[group_of(s)].name}]"))
        return 0

    metrics = LauncherMetrics()
    stack = Stack(args.var_dir / "logs", metrics, args.metrics_port)
    try:
        metrics.serve(args.metrics_port, lambda: stack.status)
    except OSError as exc:
        if args.metrics_port_given:
            print(f"error: --metrics-port {args.metrics_port}: {exc.strerror}", file=sys.stderr)
            return 1
        # The default port (9097 + offset) is taken, e.g. by a shifted test stack's neighbour:
        # serve on a free port instead; the banner and the Prometheus scrape job name it.
        metrics.serve(0, lambda: stack.status)
        assert metrics.server is not None
        print(f"  note: port {args.metrics_port} is taken ({exc.strerror}); supervisor on a free port")
        args.metrics_port = stack.metrics_port = metrics.server.server_address[1]
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
            if taken := [p for p in service.ports if port_in_use(p)]:
                # Its health check would pass against whatever listens there: refuse instead.
                raise StackError(
                    f"{service.name}: port {', '.join(map(str, taken))} already in use"
                    " (another `make run`? stop it, or shift this one with --port-offset)"
                )
            print(f"  {service.name:<11} starting ...", flush=True)
            stack.start(service, names, policies[group_of(service)])
            stack.wait_healthy(service)
            print(f"  {service.name:<11} {describe(service)}", flush=True)
        print(
            f"\nstack up; logs in {stack.log_dir}/; supervisor: http://127.0.0.1:{args.metrics_port}"
            " (/services, /metrics). Ctrl-C stops everything.",
            flush=True,
        )
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stopping and (deadline is None or time.monotonic() < deadline):
            stack.supervise_once(names)
            time.sleep(TICK_S)
        return 0
    except StackError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack.procs:
            print("\nstopping ...", flush=True)
        stack.stop()
        metrics.close()
        print("stopped; nothing left running.")


if __name__ == "__main__":
    sys.exit(main())
