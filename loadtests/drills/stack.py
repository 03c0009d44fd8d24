"""Where the running stack is, seen from outside: addresses, and the process behind each port.

A drill talks to the stack only through what any operator has: the published ports of the
compose topology (shifted by `port_offset`, as `python -m deploy.launch --port-offset N` runs
it), their HTTP APIs, and the operating system's process table (the pid that listens on a
service's port is the one a `kill -9` drill signals). The configuration comes from the
experiment's `configuration` block, which the runner fills in (see runner.py).
"""

from __future__ import annotations

import os
from typing import Any

import psutil

from deploy.topology import local_services

Configuration = dict[str, Any]


def offset(configuration: Configuration | None) -> int:
    return int((configuration or {}).get("port_offset", 0) or 0)


def port(service: str, configuration: Configuration | None = None) -> int:
    """The published (host) port of a compose service, as the local launcher shifts it."""
    for s in local_services():
        if s.name == service and s.http_port is not None:
            return s.http_port + offset(configuration)
    raise ValueError(f"no published port for service {service!r}")


def url(service: str, configuration: Configuration | None = None) -> str:
    if service == "redis":
        return f"redis://127.0.0.1:{port(service, configuration)}/0"
    return f"http://127.0.0.1:{port(service, configuration)}"


def pid_of(service: str, configuration: Configuration | None = None) -> int | None:
    """The pid of the process listening on the service's port, None when nothing listens."""
    wanted = port(service, configuration)
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == wanted and conn.pid:
            return conn.pid
    return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
