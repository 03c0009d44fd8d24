"""A light client in its own process that times the server's answers while a drill overloads it.

The overload generator keeps hundreds of streams open in one Python process on the same small
machine; its own event loop falls behind, and a 429 that left the server in 10 ms is timed by it
at tens of seconds. This probe sends a sparse, steady stream of interactive requests from a
separate process (its own interpreter and GIL; the drill starts it in its own session, so its
own scheduling group) and times each answer's head: what a user whose request arrives during
the overload sees. Each request carries X-Request-ID `probe-<start>-<i>`, reported with its head,
so the server's access log gives the server's own time for the same request. Prints one JSON
object on stdout.

Every other request carries `deadline_ms: 1`, which admission's wait estimate always exceeds:
the server takes it through the whole path of any rejection (parse, tokenise, estimate, 503 with
Retry-After), so the rejection p99 rests on hundreds of answers. The requests without it are
rejected only when the overload sheds them (a few dozen in a minute), too few for a p99: their
tail is the largest of them. Each head is reported with whether it was such a doomed request,
and (`own_wait_s`) how long the probe itself waited for a CPU while it was out.

    python -m loadtests.drills.latency_probe URL SECONDS [RATE] [KEY]
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

import httpx


def _own_wait_ns() -> int:
    """Nanoseconds this process has spent runnable but waiting for a CPU (Linux schedstat; 0
    where there is none)."""
    try:
        with open("/proc/self/schedstat") as fh:
            return int(fh.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _ask(host: str, port: int, request: bytes) -> tuple[int, float]:
    """Send one prepared request on a new connection; (status, seconds to the end of the
    head). The connection is closed at once after the head (a stream's rest is not read)."""
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the head")
            buf += chunk
        took = time.perf_counter() - t0
    if not buf.startswith(b"HTTP/1.1 ") or not buf[9:12].isdigit():
        raise ConnectionError(f"not an HTTP/1.1 status line: {buf[:40]!r}")
    return int(buf[9:12]), took


def probe(base: str, seconds: float, rate: float, key: str) -> dict:
    """Each request is sent over a plain socket: the clock reads bracket a send and the head's
    receive, with no client library's Python between them (through httpx each request's own
    work, ~1 ms of this process's CPU, was inside the timing, and with it any wait for a CPU
    that work met on a loaded box). `own_wait_s`, beside each head: how long this process
    waited for a CPU while that request was out (schedstat), so a slow head can be told apart
    from a probe that was not running."""
    # status, seconds to the head, doomed (deadline 1 ms), request id (the server's access log
    # line for it carries the same id and the server's own duration)
    heads: list[tuple[int, float, bool, str]] = []
    own_wait: list[float] = []
    errors = 0
    plain = {"prompt": "a probe", "max_tokens": 4, "ignore_eos": True, "stream": True}
    doomed = {**plain, "deadline_ms": 1}
    url = httpx.URL(base)
    host, port = url.host, url.port or 80
    bodies = {False: json.dumps(plain).encode(), True: json.dumps(doomed).encode()}
    run = f"probe-{int(time.time())}"
    start = time.perf_counter()
    n = int(seconds * rate)
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        is_doomed = bool(i % 2)
        body = bodies[is_doomed]
        rid = f"{run}-{i}"
        request = (
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            f"X-Request-ID: {rid}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        w0 = _own_wait_ns()
        try:
            status, took = _ask(host, port, request)
        except OSError:
            errors += 1
            continue
        heads.append((status, took, is_doomed, rid))
        own_wait.append((_own_wait_ns() - w0) / 1e9)
    return {"heads": heads, "own_wait_s": own_wait, "errors": errors}


PROBE_GROUP_NICE = -20  # the probe's scheduling group (see _first_in_line)


def _first_in_line() -> int | None:
    """Give this process's scheduling group (Linux autogroup: the drill starts the probe in a
    session of its own) the CPU before the others on the machine when it wakes: a client of a
    real deployment does not share its machine with the load, and on this two-core box, loaded
    by the overload's generator, the engine and anything else running, the probe otherwise
    timed its own wait for a CPU (p99 130 ms of it while a rejection was out, at load 4-5).
    Its CPU is a few requests a second. -20, above the server's own group (-10 by default,
    --sched-group-nice): at -10 beside it, the probe's own wait for a CPU while a refusal was
    out rose to p99 10-57 ms in five runs at load 8-12 (18-30 ms before the server's group
    was raised). Returns the group's nice value, None where it cannot
    be set (not Linux, not permitted) or is not this process's alone (not a session leader:
    the group is its caller's too)."""
    try:
        if os.getsid(0) != os.getpid():
            return None
        with open("/proc/self/autogroup", "w") as fh:
            fh.write(str(PROBE_GROUP_NICE))
        with open("/proc/self/autogroup") as fh:
            return int(fh.read().split("nice")[1])
    except (OSError, IndexError, ValueError):
        return None


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        base, seconds = argv[0], float(argv[1])
        rate = float(argv[2]) if len(argv) > 2 else 10.0
    except ValueError as exc:
        print(f"error: SECONDS and RATE are numbers ({exc})", file=sys.stderr)
        return 2
    key = argv[3] if len(argv) > 3 else "dev-bob-key"
    group_nice = _first_in_line()
    print(json.dumps({**probe(base, seconds, rate, key), "autogroup_nice": group_nice}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
