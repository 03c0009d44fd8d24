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

Volumes give the path mapping: a bind mount "./deploy/x:/etc/x" maps /etc/x to the repo's
deploy/x; a named volume "crawler-data:/data" maps /data to var/crawler/crawler-data.
"""

from __future__ import annotations

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

    @property
    def http_port(self) -> int | None:
        return self.ports[0] if self.ports else None


def load_compose(path: Path = COMPOSE_FILE) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _host_ports(spec: dict) -> list[int]:
    ports = []
    for entry in spec.get("ports", []):
        host = str(entry).split(":")[0]
        ports.append(int(host))
    return ports


def _path_map(spec: dict, var_dir: Path) -> list[tuple[str, Path]]:
    """(container path, local path) pairs from the service's volumes, longest first."""
    pairs = []
    for entry in spec.get("volumes", []):
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
) -> list[Service]:
    """Every compose service, in compose order, as local processes (with a skip reason where not).

    port_offset moves every published port (so a test stack can run beside a user's stack);
    direct bypasses the fault proxy (see `proxies` above).
    """
    compose = compose if compose is not None else load_compose()
    var_dir = var_dir or ROOT / "var"
    aliases = _bypasses(compose, var_dir) if direct else {}
    names = set(compose["services"])
    port_map = {p: p + port_offset for spec in compose["services"].values() for p in _host_ports(spec)}
    flags = {"REDIS": redis}
    plan = []
    for name, spec in compose["services"].items():
        local = spec.get("x-local", {})
        paths = _path_map(spec, var_dir / name)
        own_ports = {str(p) for p in _host_ports(spec)}
        argv = [
            str(port_map[int(a)]) if a in own_ports else _localise(a, names, paths, port_map)
            for a in (_bypass(str(c), aliases) for c in spec.get("command", []))
        ]
        env_spec = dict(spec.get("environment", {}) or {})
        if not redis:
            env_spec.update(local.get("embedded-env", {}))
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
        plan.append(
            Service(
                name,
                argv,
                env,
                [port_map[p] for p in _host_ports(spec)],
                _health_path(spec),
                skip,
                files,
                paths,
                port_map,
                spec,
            )
        )
    return plan


def write_localised_files(service: Service, names: set[str]) -> None:
    """Write the localised copies of the configs a service reads (see `localise-files`)."""
    for source, target in service.files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            _localise(source.read_text(encoding="utf-8"), names, service.paths, service.port_map),
            encoding="utf-8",
        )
