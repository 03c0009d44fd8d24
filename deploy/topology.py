"""The stack's topology, read from docker-compose.yml: the one description both launchers share.

`docker compose up` runs the compose file in containers. `make run` (deploy/launch.py) turns the
same file into local processes: a service name in a host position ("websim:8090",
"http://dedup:8082") becomes 127.0.0.1, a container path becomes its mounted local path (below), and
`python` becomes this interpreter. A service's `x-local` entry says what is different locally:

    only-with: REDIS      start it only when that variable/flag is set (e.g. `make run REDIS=1`)
    binary: prometheus    not a module of ours: run this binary if it is installed, else skip
    module: deploy.x      an image that is not ours, replaced locally by `python -m deploy.x`
                          given the same command-line flags (the fault proxy: Toxiproxy's image
                          in compose, deploy/faultproxy under `make run`)
    embedded-env: {...}   environment used instead when the stack runs without Redis
    localise-files: [...] container files (configs naming other services) that are copied,
                          localised like the command, to var/<service>/ and used from there
    proxies: /config/x    a fault proxy and its proxies file (Toxiproxy's -config JSON): other
                          services reach each other at <this service>:<listen port>; with
                          `direct` (`make run` --direct) it is skipped and every such address
                          becomes the proxy's upstream, so hops go straight to their service
    replicas: WORKERS     compose runs `deploy.replicas` copies; locally `make run WORKERS=N`
                          runs N (none without it): <name>-1 .. <name>-N, each with its own
                          `expose`d port (the first copy on the compose port, the next ones on
                          the ports after it), its own anonymous volumes under var/<name>-<i>/
    replica-args: [...]   appended to a copy's command, "{replica}" replaced by its name
                          (e.g. ["--worker-id", "{replica}"]; in compose each container names
                          itself)
    single-env: {...}     environment used instead when the stack runs without WORKERS

Volumes give the path mapping: a bind mount "./deploy/x:/etc/x" maps /etc/x to the repo's
deploy/x; a named volume "crawler-data:/data" maps /data to var/crawler/crawler-data; an anonymous
volume "/data" (one per container, what replicas use) maps /data to var/<service>/data.

Ports: "8081:8081", "127.0.0.1:6379:6379" (published on one host address only) and the long form
{target, published, host_ip} are read; the host port is what `make run` listens on (loopback).
A Prometheus config among `localise-files` gets its DNS service discovery of a replicated
service ("crawler-worker", type A: every replica's address in compose) replaced by the local
replicas' addresses, or the job dropped when none runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Service:
    """One service as the local launcher runs it."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ports: list[int]  # host ports, in compose order; the first is the HTTP port
    health_path: str | None  # HTTP path polled on the first port, None when not HTTP
    skip: str | None = None  # why it is not started locally, None when it is
    files: dict[Path, Path] = field(default_factory=dict)  # repo file -> localised copy to write
    paths: list[tuple[str, Path]] = field(default_factory=list)  # container path -> local path
    port_map: dict[int, int] = field(default_factory=dict)  # compose port -> local port
    compose: dict = field(default_factory=dict, repr=False, compare=False)
    group: str = ""  # the compose service it runs: its own name, or a replicated service's name
    replicas: dict[str, list[int]] = field(default_factory=dict)  # replicated service -> local ports

    @property
    def http_port(self) -> int | None:
        return self.ports[0] if self.ports else None


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def parse_port(entry: object) -> tuple[str | None, int, int]:
    """(host address or None, host port, container port) of one compose `ports` entry.

    "8081:8081", "127.0.0.1:6379:6379", "9090" (host port = container port here), "8081:8081/tcp"
    and the long form {target, published, host_ip}. Ranges are refused with a clear error.
    """
    if isinstance(entry, dict):
        target = int(entry["target"])
        return entry.get("host_ip"), int(entry.get("published", target)), target
    text = str(entry).rsplit("/", 1)[0]  # "/tcp", "/udp"
    parts = text.rsplit(":", 2)
    if "-" in text or not all(p.isdigit() for p in parts[-2:]) or len(parts) > 3:
        raise ValueError(f"ports: expected [ADDRESS:]HOST:CONTAINER or CONTAINER, got {entry!r}")
    container = int(parts[-1])
    host = int(parts[-2]) if len(parts) >= 2 else container
    return (parts[0] if len(parts) == 3 else None), host, container


def _host_ports(spec: dict) -> list[int]:
    return [parse_port(entry)[1] for entry in spec.get("ports", [])]


def _exposed_ports(spec: dict) -> list[int]:
    return [int(str(entry).split("/")[0]) for entry in spec.get("expose", [])]


def replica_count(spec: dict, counts: dict[str, int]) -> int | None:
    """How many copies of a service run locally (None: not a replicated service)."""
    flag = spec.get("x-local", {}).get("replicas")
    return None if flag is None else counts.get(flag, 0)


def _path_map(spec: dict, var_dir: Path) -> list[tuple[str, Path]]:
    """(container path, local path) pairs from the service's volumes, longest first."""
    pairs = []
    for entry in spec.get("volumes", []):
        if ":" not in str(entry):  # anonymous: one per container
            pairs.append((str(entry), var_dir / Path(str(entry)).name))
            continue
        src, dst = str(entry).split(":")[:2]
        local = ROOT / src[2:] if src.startswith("./") else var_dir / src
        pairs.append((dst, local))
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def _localise(
    value: str, names: set[str], paths: list[tuple[str, Path]], ports: dict[int, int] | None = None
) -> str:
    """Rewrite container addresses, ports and paths to their local equivalents."""
    if names:
        alternatives = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
        # A service name followed by a port, or after "//", is a host position.
        value = re.sub(rf"(?<![\w.-])(?:{alternatives})(?=:\d)", LOOPBACK, value)
        value = re.sub(rf"(?<=//)(?:{alternatives})(?![\w.-])", LOOPBACK, value)
    value = value.replace("0.0.0.0", LOOPBACK)
    if ports:
        value = re.sub(
            rf"(?<={re.escape(LOOPBACK)}:)(\d+)\b",
            lambda m: str(ports.get(int(m.group(1)), m.group(1))),
            value,
        )
    for container, local in paths:
        value = re.sub(rf"(?<![\w./-]){re.escape(container)}(?=/|\b|$)", str(local), value)
    return value


def _bypasses(compose: dict, var_dir: Path) -> dict[str, str]:
    """For `direct`: each fault-proxy address ("toxiproxy:18090") -> its upstream ("websim:8090")."""
    aliases = {}
    for name, spec in compose["services"].items():
        proxies_file = spec.get("x-local", {}).get("proxies")
        if proxies_file:
            path = Path(_localise(proxies_file, set(), _path_map(spec, var_dir / name)))
            for proxy in json.loads(path.read_text(encoding="utf-8")):
                aliases[f"{name}:{proxy['listen'].rsplit(':', 1)[1]}"] = proxy["upstream"]
    return aliases


def _bypass(value: str, aliases: dict[str, str]) -> str:
    for alias, upstream in aliases.items():
        value = re.sub(rf"(?<![\w.-]){re.escape(alias)}(?!\d)", upstream, value)
    return value


def _health_path(spec: dict) -> str | None:
    test = spec.get("healthcheck", {}).get("test", [])
    match = re.search(r"http://127\.0\.0\.1:\d+(/[\w/.-]*)", " ".join(map(str, test)))
    return match.group(1) if match else None


def _module_of(argv: list[str]) -> str | None:
    if len(argv) >= 3 and argv[0] == "python" and argv[1] == "-m":
        return argv[2]
    return None


def _runnable(module: str) -> bool:
    """`python -m module` would run: the module exists, and a package has a __main__."""
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations is not None:
            spec = importlib.util.find_spec(f"{module}.__main__")
    except ModuleNotFoundError:
        return False
    return spec is not None


def local_services(
    *,
    redis: bool = False,
    var_dir: Path | None = None,
    port_offset: int = 0,
    compose: dict | None = None,
    direct: bool = False,
    workers: int = 0,
) -> list[Service]:
    """Every compose service, in compose order, as local processes (with a skip reason where not).

    port_offset moves every published port (so a test stack can run beside a user's stack);
    direct bypasses the fault proxy (see `proxies` above); workers is how many copies of each
    `replicas: WORKERS` service run (`make run WORKERS=N`; it implies redis). A replicated
    service appears as <name>-1 .. <name>-N, or once under its own name, skipped, when N is 0.
    """
    if workers < 0:
        raise ValueError(f"workers: expected 0 or more, got {workers}")
    compose = compose if compose is not None else load_compose()
    var_dir = var_dir or ROOT / "var"
    redis = redis or workers > 0
    aliases = _bypasses(compose, var_dir) if direct else {}
    names = set(compose["services"])
    port_map = {p: p + port_offset for spec in compose["services"].values() for p in _host_ports(spec)}
    flags = {"REDIS": redis, "WORKERS": workers > 0}
    counts = {"WORKERS": workers}
    replicas = {
        name: [p + i + port_offset for i in range(n) for p in _exposed_ports(spec)[:1]]
        for name, spec in compose["services"].items()
        if (n := replica_count(spec, counts)) is not None
    }
    plan = []
    for name, spec in compose["services"].items():
        n = replica_count(spec, counts)
        if n is None:
            copies: list[tuple[str, dict[int, int]]] = [(name, {p: port_map[p] for p in _host_ports(spec)})]
        elif n == 0:
            copies = [(name, {})]
        else:
            exposed = _exposed_ports(spec)
            copies = [(f"{name}-{i + 1}", {p: p + i + port_offset for p in exposed}) for i in range(n)]
        for instance, own in copies:
            service = _local_service(
                name, instance, own, spec, names, var_dir, port_map, aliases, flags, direct, n
            )
            plan.append(dataclasses.replace(service, replicas=replicas))
    return plan


def _local_service(
    group: str,
    name: str,
    own_ports: dict[int, int],
    spec: dict,
    names: set[str],
    var_dir: Path,
    port_map: dict[int, int],
    aliases: dict[str, str],
    flags: dict[str, bool],
    direct: bool,
    copies: int | None,
) -> Service:
    """One local process of compose service `group` (named `name`: a replica has its own)."""
    local = spec.get("x-local", {})
    paths = _path_map(spec, var_dir / name)
    command = [str(c) for c in spec.get("command", [])]
    if copies:
        command += [str(a).replace("{replica}", name) for a in local.get("replica-args", [])]
    own = {str(p): str(local_port) for p, local_port in own_ports.items()}
    command = [_bypass(c, aliases) for c in command]
    argv = [own.get(a) or _localise(a, names, paths, port_map) for a in command]
    env_spec = dict(spec.get("environment", {}) or {})
    if not flags["REDIS"]:
        env_spec.update(local.get("embedded-env", {}))
    if not flags["WORKERS"]:
        env_spec.update(local.get("single-env", {}))
    env = {k: _localise(_bypass(str(v), aliases), names, paths, port_map) for k, v in env_spec.items()}
    files = {}
    for container_file in local.get("localise-files", []):
        source = _localise(container_file, set(), paths)
        target = var_dir / name / Path(container_file).name
        files[Path(source)] = target
        argv = [a.replace(source, str(target)) for a in argv]
    if stand_in := local.get("module"):
        argv = ["python", "-m", stand_in, *argv]
    skip = "bypassed (direct)" if direct and local.get("proxies") else None
    if (flag := local.get("only-with")) and not flags.get(flag):
        skip = f"only with {flag}=1"
    if copies == 0:
        skip = f"only with {local['replicas']}=N"
    if binary := local.get("binary"):
        if shutil.which(binary) is None:
            skip = skip or f"{binary} not installed"
        elif not argv or argv[0].startswith("-"):
            argv = [binary, *argv]
    module = _module_of(argv)
    if module is not None:
        if skip is None and not _runnable(module):
            skip = f"{module} does not exist yet"
        argv = [sys.executable, *argv[1:]]
    elif not binary and argv and shutil.which(argv[0]) is None:
        skip = skip or f"{argv[0]} not installed"
    return Service(
        name,
        argv,
        env,
        list(own_ports.values()),
        _health_path(spec),
        skip,
        files,
        paths,
        port_map,
        spec,
        group,
    )


def write_localised_files(service: Service, names: set[str]) -> None:
    """Write the localised copies of the configs a service reads (see `localise-files`)."""
    for source, target in service.files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        text = _localise(source.read_text(encoding="utf-8"), names, service.paths, service.port_map)
        target.write_text(localise_replica_discovery(text, service.replicas), encoding="utf-8")


def localise_replica_discovery(text: str, replicas: dict[str, list[int]]) -> str:
    """In a Prometheus config, DNS discovery of a replicated service -> the local replicas' targets.

    Compose resolves "crawler-worker" to every replica's address; locally each replica listens
    on its own loopback port, so the job gets static targets, and is dropped when none runs.
    Any other text is returned unchanged.
    """
    config = yaml.safe_load(text) if replicas and "dns_sd_configs" in text else None
    if not isinstance(config, dict) or not isinstance(config.get("scrape_configs"), list):
        return text
    jobs = []
    for job in config["scrape_configs"]:
        discovered = [n for sd in job.get("dns_sd_configs", []) for n in sd.get("names", []) if n in replicas]
        if not discovered:
            jobs.append(job)
            continue
        targets = [f"{LOOPBACK}:{port}" for name in discovered for port in replicas[name]]
        job = {k: v for k, v in job.items() if k != "dns_sd_configs"}
        if targets:
            jobs.append({**job, "static_configs": [{"targets": targets}]})
    config["scrape_configs"] = jobs
    return yaml.safe_dump(config, sort_keys=False)
