"""Chaos Toolkit actions: the faults a drill injects and the work it drives, from outside the stack.

Processes are signalled by the pid listening on their published port (what `kill -9` in a
terminal would hit); network faults go through a proxy speaking Toxiproxy's HTTP API; websim's
own admin API adds latency and errors per host; load comes from plain HTTP clients. Every fault
marks `fault_start` / `fault_end` in the drill's record (record.py) and has a rollback that
undoes it whatever state the drill stopped in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from chaoslib.exceptions import ActivityFailed

from deploy.topology import ROOT
from loadtests.drills import stack
from loadtests.drills.record import RECORD, figure, mark, since

Configuration = dict[str, Any]
TIMEOUT = httpx.Timeout(10.0)
KEYS = ("dev-alice-key", "dev-bob-key")
MAX_OUTSTANDING = 400  # overload client: open requests at most
# What a plain-socket request can raise (_raw_completion): refused, reset, cut short, timed out.
RAW_ERRORS = (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


# -- processes ---------------------------------------------------------------------------------


def _pid(service: str, configuration: Configuration | None) -> int:
    pid = stack.pid_of(service, configuration)
    if pid is None:
        raise ActivityFailed(f"no process listens on {service}'s port {stack.port(service, configuration)}")
    return pid


def kill_service(service: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """kill -9 the service's process (no cleanup, no flush: a crash, a power cut, an OOM kill)."""
    pid = _pid(service, configuration)
    os.kill(pid, signal.SIGKILL)
    at = mark("fault_start")
    mark("fault_end", at)
    RECORD.state[f"{service}_killed_pid"] = pid
    return {"service": service, "pid": pid, "signal": "SIGKILL"}


def kill_with_pending(
    service: str = "dedup",
    proxy: str = "dedup_redis",
    stream: str = "pg:pages",
    group: str = "dedup",
    latency_ms: int = 1000,
    timeout_s: float = 60.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """kill -9 a stream consumer at the moment it holds entries read but not acknowledged.

    A kill at a random moment usually lands between batches, with nothing pending, and proves
    nothing about redelivery. So the replies on the consumer's Redis hop are slowed (a latency
    toxic: every XACK arrives `latency_ms` late), Redis is polled (XPENDING) until the group
    holds pending entries, and the process is killed then. Without the fault proxy, the poll
    alone is tried."""
    import redis

    base = toxiproxy_url(configuration)
    toxic = {"name": "drill_pending_window", "type": "latency", "stream": "downstream", "toxicity": 1.0}
    toxic["attributes"] = {"latency": latency_ms, "jitter": 0}
    try:
        r = httpx.post(f"{base}/proxies/{proxy}/toxics", json=toxic, timeout=TIMEOUT)
        slowed = r.status_code in (200, 201)
    except httpx.HTTPError:
        slowed = False
    client = redis.Redis.from_url(stack.url("redis", configuration), socket_timeout=2)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                pending = int(client.xpending(stream, group)["pending"])
            except redis.RedisError:
                pending = 0
            if pending > 0:
                result = kill_service(service, configuration)
                figure("pending_at_kill", pending)
                return {**result, "pending_at_kill": pending, "acks_slowed_ms": latency_ms if slowed else 0}
            time.sleep(0.02)
        raise ActivityFailed(
            f"{group} never held a pending entry on {stream} within {timeout_s:.0f}s: nothing is flowing"
        )
    finally:
        client.close()
        if slowed:
            with contextlib.suppress(httpx.HTTPError):
                httpx.delete(f"{base}/proxies/{proxy}/toxics/drill_pending_window", timeout=TIMEOUT)


def wait_restarted(
    service: str, timeout_s: float = 120.0, configuration: Configuration | None = None
) -> dict:
    """Wait for a new process on the service's port that answers its health check."""
    from loadtests.drills.probes import service_healthy

    old = RECORD.state.get(f"{service}_killed_pid")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = stack.pid_of(service, configuration)
        if pid is not None and pid != old and service_healthy(service, configuration):
            at = mark("recovered")
            figure("time_to_recover_s", since("fault_start", at))
            return {"service": service, "new_pid": pid, "after_s": RECORD.figures["time_to_recover_s"]}
        time.sleep(0.25)
    raise ActivityFailed(
        f"{service} was not restarted within {timeout_s:.0f}s of kill -9 "
        "(does the launcher honour compose's restart: policy?)"
    )


def freeze_service(service: str, seconds: float = 30.0, configuration: Configuration | None = None) -> dict:
    """SIGSTOP the service's process for `seconds`, then SIGCONT (a GC pause, a hung disk, a VM steal)."""
    pid = _pid(service, configuration)
    RECORD.state["frozen_pid"] = pid
    os.kill(pid, signal.SIGSTOP)
    mark("fault_start")
    time.sleep(seconds)
    os.kill(pid, signal.SIGCONT)
    RECORD.state.pop("frozen_pid", None)
    mark("fault_end")
    return {"service": service, "pid": pid, "frozen_s": seconds}


def thaw_service(configuration: Configuration | None = None) -> dict:
    """Rollback: SIGCONT whatever this drill froze (harmless when nothing is frozen)."""
    pid = RECORD.state.pop("frozen_pid", None)
    if pid is not None and stack.alive(pid):
        os.kill(pid, signal.SIGCONT)
        mark("fault_end")
    return {"thawed": pid}


# -- crawls ------------------------------------------------------------------------------------


def _indexed(url: str, configuration: Configuration | None) -> bool:
    try:
        r = httpx.get(
            f"{stack.url('dedup', configuration)}/v1/clusters", params={"url": url}, timeout=TIMEOUT
        )
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def start_crawl(
    hosts: int = 10,
    max_pages: int = 300,
    max_depth: int = 4,
    first_host: int = 0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Start a crawl of `hosts` websim hosts that dedup has not indexed yet (so every page event
    of this crawl is new to it, and a lost one shows); websim's log is cleared first, so its
    judge counts this crawl alone."""
    total = int(httpx.get(f"{stack.url('websim', configuration)}/", timeout=TIMEOUT).json()["hosts"])
    first = first_host
    while first + hosts <= total and _indexed(f"http://h{first:04d}.sim.test/", configuration):
        first += hosts
    if first + hosts > total:
        raise ActivityFailed(f"dedup has indexed every websim host block: restart the stack ({total} hosts)")
    body = {
        "seeds": [f"http://h{i:04d}.sim.test/" for i in range(first, first + hosts)],
        "max_pages": max_pages,  # scope: the seeds' hosts only, all of them new to dedup
        "max_depth": max_depth,
    }
    httpx.post(f"{stack.url('websim', configuration)}/log/clear", timeout=TIMEOUT).raise_for_status()
    r = httpx.post(f"{stack.url('crawler', configuration)}/v1/crawls", json=body, timeout=TIMEOUT)
    if r.status_code != 201:
        raise ActivityFailed(f"crawl not started: {r.status_code} {r.text[:200]}")
    crawl_id = r.json()["crawl_id"]
    RECORD.state.update(crawl_id=crawl_id, crawl_body=body)
    mark("crawl started")
    return {"crawl_id": crawl_id, "hosts": f"h{first:04d}..h{first + hosts - 1:04d}", "config": body}


def wait_crawl_progress(
    fetched: int = 50, timeout_s: float = 120.0, configuration: Configuration | None = None
) -> dict[str, Any]:
    """Wait until the crawl has fetched `fetched` pages (a fault mid-crawl, not before it starts)."""
    crawl_id = RECORD.state["crawl_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(
            f"{stack.url('crawler', configuration)}/v1/crawls/{crawl_id}", timeout=TIMEOUT
        ).json()
        if status["stats"]["fetched"] >= fetched:
            figure("fetched_before_fault", status["stats"]["fetched"])
            RECORD.state["in_flight_before_fault"] = status["in_flight"]
            return {"fetched": status["stats"]["fetched"], "state": status["state"]}
        if status["state"] not in ("pending", "running"):
            raise ActivityFailed(f"crawl ended ({status['state']}) before {fetched} pages: too small a crawl")
        time.sleep(0.2)
    raise ActivityFailed(f"crawl fetched fewer than {fetched} pages in {timeout_s:.0f}s")


def resume_crawl(configuration: Configuration | None = None) -> dict[str, Any]:
    """Start the drill's crawl again under its id: a crawl id started again resumes from its store."""
    crawl_id, body = RECORD.state["crawl_id"], RECORD.state["crawl_body"]
    base = stack.url("crawler", configuration)
    status = httpx.get(f"{base}/v1/crawls/{crawl_id}", timeout=TIMEOUT)
    if status.status_code == 200 and status.json()["state"] == "paused":
        httpx.post(f"{base}/v1/crawls/{crawl_id}/resume", timeout=TIMEOUT).raise_for_status()
        figure("resumed_by", "the drill (POST /v1/crawls/{id}/resume)")
        return {"crawl_id": crawl_id, "resumed": True}
    if status.status_code == 200 and status.json()["state"] in ("pending", "running", "finished"):
        figure("resumed_by", "the crawler")
        return {"crawl_id": crawl_id, "resumed": False, "state": status.json()["state"]}
    r = httpx.post(f"{base}/v1/crawls", params={"crawl_id": crawl_id}, json=body, timeout=TIMEOUT)
    if r.status_code != 201:
        raise ActivityFailed(f"crawl {crawl_id} not resumed: {r.status_code} {r.text[:200]}")
    figure("resumed_by", "the drill (POST /v1/crawls?crawl_id=)")
    return {"crawl_id": crawl_id, "resumed": True}


# -- a full disk (root only: a small tmpfs over the crawler's data directory) -----------------


def crawler_data_dir(configuration: Configuration | None = None) -> Path:
    """Where `make run` keeps the crawler's stores and WARC files (compose volume crawler-data)."""
    var_dir = Path((configuration or {}).get("var_dir") or ROOT / "var")
    return var_dir / "crawler" / "crawler-data"


def small_disk(size_mb: int = 16, configuration: Configuration | None = None) -> dict[str, Any]:
    """Mount a `size_mb` tmpfs over the crawler's data directory: crawls started from now on keep
    their store and WARC files there (those already open stay where they are)."""
    path = crawler_data_dir(configuration)
    if not path.is_dir():
        raise ActivityFailed(f"no crawler data directory at {path} (pass the stack's --var-dir)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise ActivityFailed(f"mount tmpfs on {path}: {done.stderr.strip()}")
    RECORD.state["small_disk"] = str(path)
    return {"mounted": str(path), "size_mb": size_mb}


def fill_disk(configuration: Configuration | None = None) -> dict[str, Any]:
    """Fill the small disk to the last byte (a filler file, written until ENOSPC)."""
    path = Path(RECORD.state["small_disk"]) / "drill-filler"
    written = 0
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:  # unbuffered: ENOSPC comes from a write, never from a flush at close
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError:
                break
            if n <= 0:
                break
            written += n
    finally:
        os.close(fd)
    mark("fault_start")
    figure("filler_mb", round(written / 2**20, 1))
    return {"filler_bytes": written}


def free_disk(configuration: Configuration | None = None) -> dict[str, Any]:
    """Space returns: the filler file is removed."""
    path = Path(RECORD.state.get("small_disk", "/nonexistent")) / "drill-filler"
    path.unlink(missing_ok=True)
    mark("fault_end")
    return {"freed": str(path)}


def remove_small_disk(configuration: Configuration | None = None) -> dict[str, Any]:
    """Rollback: free the space and unmount the tmpfs (lazily: the crawler may hold a file open)."""
    mounted = RECORD.state.pop("small_disk", None)
    if mounted is None:
        return {"unmounted": None}
    (Path(mounted) / "drill-filler").unlink(missing_ok=True)
    subprocess.run(["umount", "-l", mounted], capture_output=True, check=False)
    return {"unmounted": mounted}


# -- websim faults (its own admin API) ---------------------------------------------------------


def websim_faults(
    share_of_hosts: float = 0.5,
    error_rate: float = 0.3,
    latency_ms: float = 0.0,
    status: int = 503,
    retry_after: int | None = None,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Errors and latency on a share of the drill's crawl hosts (every other one).

    Injected errors answer `status` (websim's /faults `status`: 429, 500, 502, 503 or 504), with
    Retry-After `retry_after` seconds when given (429/503 only). A websim that rejects them fails
    the action (4xx naming the field): no quiet fallback to another status.
    """
    seeds = [httpx.URL(u).host for u in RECORD.state["crawl_body"]["seeds"]]
    step = max(1, round(1 / share_of_hosts)) if share_of_hosts > 0 else len(seeds) + 1
    names = seeds[::step]
    base = stack.url("websim", configuration)
    extra: dict[str, Any] = {"status": status}
    if retry_after is not None:
        extra["retry_after"] = retry_after
    for name in names:
        body: dict[str, Any] = {"host": name, "error_rate": error_rate, "latency_ms": latency_ms, **extra}
        httpx.post(f"{base}/faults", json=body, timeout=TIMEOUT).raise_for_status()
    figure("injected_status", status)
    RECORD.state["faulty_hosts"] = names
    mark("fault_start")
    return {"hosts": names, "error_rate": error_rate, "latency_ms": latency_ms, "status": status}


def clear_websim_faults(configuration: Configuration | None = None) -> dict[str, Any]:
    httpx.delete(f"{stack.url('websim', configuration)}/faults", timeout=TIMEOUT).raise_for_status()
    mark("fault_end")
    return {"faults": []}


# -- network faults (Toxiproxy's HTTP API) -----------------------------------------------------


def toxiproxy_url(configuration: Configuration | None = None) -> str:
    configured = (configuration or {}).get("toxiproxy_url")
    if configured:
        return str(configured).rstrip("/")
    try:
        return stack.url("toxiproxy", configuration)
    except ValueError:
        return f"http://127.0.0.1:{8474 + stack.offset(configuration)}"


def add_toxic(
    proxy: str,
    toxic_type: str,
    attributes: dict[str, Any] | None = None,
    stream: str = "downstream",
    toxicity: float = 1.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Add a toxic to a proxy (POST /proxies/{proxy}/toxics), named after the drill's fault."""
    body = {
        "name": f"drill_{toxic_type}_{stream}",
        "type": toxic_type,
        "stream": stream,
        "toxicity": toxicity,
        "attributes": attributes or {},
    }
    r = httpx.post(f"{toxiproxy_url(configuration)}/proxies/{proxy}/toxics", json=body, timeout=TIMEOUT)
    if r.status_code not in (200, 201):
        raise ActivityFailed(f"toxic {toxic_type} on {proxy} refused: {r.status_code} {r.text[:200]}")
    mark("fault_start")
    return r.json()


def set_proxy_enabled(proxy: str, enabled: bool, configuration: Configuration | None = None) -> dict:
    """Cut (enabled=false) or restore a proxy: every connection through it is closed / refused."""
    r = httpx.post(
        f"{toxiproxy_url(configuration)}/proxies/{proxy}", json={"enabled": enabled}, timeout=TIMEOUT
    )
    if r.status_code != 200:
        raise ActivityFailed(f"proxy {proxy} not updated: {r.status_code} {r.text[:200]}")
    mark("fault_end" if enabled else "fault_start")
    return r.json()


def reset_proxies(configuration: Configuration | None = None) -> dict[str, Any]:
    """Rollback: every proxy enabled, every toxic removed (Toxiproxy's POST /reset)."""
    try:
        httpx.post(f"{toxiproxy_url(configuration)}/reset", timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        return {"reset": False, "error": str(exc)}
    return {"reset": True}


def remove_toxics(proxy: str, configuration: Configuration | None = None) -> dict[str, Any]:
    """Remove every toxic of a proxy and enable it again (the heal; marks fault_end)."""
    base = toxiproxy_url(configuration)
    removed = []
    r = httpx.get(f"{base}/proxies/{proxy}/toxics", timeout=TIMEOUT)
    if r.status_code == 200:
        for toxic in r.json():
            httpx.delete(f"{base}/proxies/{proxy}/toxics/{toxic['name']}", timeout=TIMEOUT)
            removed.append(toxic["name"])
    httpx.post(f"{base}/proxies/{proxy}", json={"enabled": True}, timeout=TIMEOUT)
    mark("fault_end")
    return {"proxy": proxy, "removed": removed}


def sink_hop(configuration: Configuration | None = None) -> str:
    """The proxy on the crawler's page-event hop: to Redis when the stack runs it, else to dedup."""
    from loadtests.drills.probes import service_healthy

    return "crawler_redis" if service_healthy("redis", configuration) else "crawler_dedup"


def toxic_for(
    proxies: list[str],
    toxic_type: str,
    seconds: float,
    attributes: dict[str, Any] | None = None,
    stream: str = "upstream",
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """A toxic on each of these proxies for `seconds`, then removed (run it in the background)."""
    for proxy in proxies:
        add_toxic(proxy, toxic_type, attributes, stream, 1.0, configuration)
    time.sleep(seconds)
    for proxy in proxies:
        remove_toxics(proxy, configuration)
    return {"proxies": proxies, "toxic": toxic_type, "seconds": seconds}


def partition_sink(
    seconds: float = 20.0, toxic_type: str = "timeout", configuration: Configuration | None = None
) -> dict:
    """Cut the crawler -> page sink hop for `seconds` (a `timeout` toxic with timeout 0 holds every
    byte, as behind a dead link; `reset_peer` answers each connection with a TCP reset)."""
    return toxic_for(
        [sink_hop(configuration)], toxic_type, seconds, {"timeout": 0}, "upstream", configuration
    )


def hold(seconds: float) -> dict[str, float]:
    """Keep the fault in place for a while."""
    time.sleep(seconds)
    return {"held_s": seconds}


# -- inference load ----------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def _completion(
    http: httpx.AsyncClient,
    key: str,
    *,
    stream: bool,
    max_tokens: int,
    prompt: str = "the crawler",
    progress: dict[str, Any] | None = None,
) -> tuple[int, float, float | None, bool]:
    """(status, seconds to the answer's head or whole body, TTFT for streams, Retry-After present).

    `progress` (optional) gets `head` (status) once the answer's head is in, `chunks` counted
    after it: where a transport error struck."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
    if not stream:
        body["priority"] = "batch"
    headers = {"Authorization": f"Bearer {key}"}
    progress = {} if progress is None else progress
    start = time.perf_counter()
    async with http.stream("POST", "/v1/completions", json=body, headers=headers) as r:
        head = time.perf_counter() - start
        progress["head"] = r.status_code
        progress["chunks"] = 0
        retry_after = "retry-after" in r.headers
        if r.status_code != 200:
            await r.aread()
            return r.status_code, head, None, retry_after
        ttft = None
        async for chunk in r.aiter_bytes():
            progress["chunks"] += 1
            if ttft is None and b"data:" in chunk:
                ttft = time.perf_counter() - start
        return r.status_code, time.perf_counter() - start, ttft, retry_after


async def _calibrate(base: str, seconds: float, concurrency: int, max_tokens: int) -> float:
    """Completions per second the server sustains, closed loop (its capacity for this request)."""
    done = 0
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:

        async def user(i: int) -> None:
            nonlocal done
            while time.perf_counter() < stop:
                status, *_ = await _completion(http, KEYS[i % 2], stream=False, max_tokens=max_tokens)
                done += status == 200

        started = time.perf_counter()
        await asyncio.gather(*(user(i) for i in range(concurrency)))
        return done / (time.perf_counter() - started)


async def _raw_completion(
    host: str,
    port: int,
    key: str,
    *,
    stream: bool,
    max_tokens: int,
    prompt: str = "the crawler",
    progress: dict[str, Any] | None = None,
) -> tuple[int, float, float | None, bool]:
    """`_completion` over a plain socket: one request, `Connection: close`, the answer read to
    its end as it arrives (every chunk of every stream), the same figures.

    The overload generator keeps hundreds of answers open at once on the machine under test;
    through httpx each chunk of each stream cost it tens of microseconds of Python (httpcore,
    h11, anyio), as much CPU as the server's own event loop spent (drill 5). Here a chunk is
    one StreamReader.read."""
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}
    if not stream:
        body["priority"] = "batch"
    payload = json.dumps(body).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    progress = {} if progress is None else progress
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        took = time.perf_counter() - start
        status = int(head[9:12])
        progress["head"] = status
        progress["chunks"] = 0
        retry_after = b"\r\nretry-after:" in head.lower()
        if status != 200:
            await reader.read()
            return status, took, None, retry_after
        ttft = None
        while chunk := await reader.read(65536):
            progress["chunks"] += 1
            if ttft is None and b"data:" in chunk:
                ttft = time.perf_counter() - start
        return status, time.perf_counter() - start, ttft, retry_after
    finally:
        writer.close()


def run_on_uvloop(coro: Any) -> Any:
    """Run `coro` on uvloop's event loop (libuv, in C) where it is installed, else asyncio's.

    The overload generator shares the machine it overloads: on asyncio's loop it spent 1.45-2.06
    ms of CPU per offered request, and on a loaded 2-core box its loop fell behind its own
    schedule and then sent what was due in a clump (drill 5, load 8-10: up to 110-131 requests
    in 100 ms at 200/s, where 20 were due). A clump is a burst of work the server's loop takes
    in arrival order, and the probe's requests landed behind it (the slow refusals followed
    38-44 sends in the 100 ms before, the fast ones 19-21). On uvloop: 0.59-0.62 ms per
    request, the clumps a third of the size, and the CPU it no longer takes is the server's:
    a real deployment's clients run on machines of their own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover (installed with the inference extra)
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _autogroup_nice(pid: int | None) -> int | None:
    """The niceness of process `pid`'s scheduling group (Linux autogroup), None where unknown."""
    try:
        with open(f"/proc/{pid}/autogroup") as fh:
            return int(fh.read().split("nice")[-1])
    except (OSError, ValueError, TypeError):
        return None


async def _overload(base: str, rate: float, seconds: float, max_tokens: int, pid: int | None) -> dict:
    results: list[tuple[bool, int, float, float | None, bool]] = []
    errors: Counter[str] = Counter()
    error_details: list[str] = []
    rss: list[float] = []
    proc = psutil.Process(pid) if pid else None
    # At most MAX_OUTSTANDING requests open at once: beyond that the client itself becomes the
    # bottleneck on a small machine. An arrival that finds them all open is not sent and
    # counted (`not_sent`): the server is answering slower than the offered rate.
    # One connection per request, none kept alive: this client falls seconds behind its own
    # sockets (hundreds of streams in one Python process on a small box), so it read a
    # response's end, pooled the connection and sent the next request on it just as uvicorn's
    # keep-alive timer (5 s from the server's last write) closed it: the server's kernel reset
    # it and httpx raised ReadError before the head (1-4 a run, expiring pooled connections
    # after 1 s did not help: the client's idle clock starts late). A real client retries such
    # a request; this one would count a transport error against the server.
    # Each request goes over a plain socket (_raw_completion), not httpx: the generator's CPU
    # is taken from the server under test on a two-core machine.
    url = httpx.URL(base)
    host, port = url.host, url.port or 80
    outstanding = 0

    async def one(i: int) -> None:
        nonlocal outstanding
        interactive = i % 2 == 0
        progress: dict[str, Any] = {}
        sent = time.perf_counter()
        try:
            async with asyncio.timeout(60.0):
                status, took, ttft, retry = await _raw_completion(
                    host,
                    port,
                    KEYS[(i // 2) % 2],
                    stream=interactive,
                    max_tokens=max_tokens,
                    progress=progress,
                )
            results.append((interactive, status, took, ttft, retry))
        except (
            OSError,
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as exc:
            errors[type(exc).__name__] += 1
            where = (
                f"after the head ({progress['head']}) and {progress['chunks']} chunks"
                if "head" in progress
                else "before the head"
            )
            kind = "stream" if interactive else "batch"
            error_details.append(
                f"{type(exc).__name__} {exc!r:.80} on a {kind} request {where},"
                f" {time.perf_counter() - sent:.1f} s after it started, {outstanding} open"
            )
        finally:
            outstanding -= 1

    tasks = []
    not_sent = 0
    late: list[float] = []  # how far behind its schedule each arrival went out (0: on time)
    cpu0 = time.process_time()
    start = time.perf_counter()
    n = int(rate * seconds)
    next_rss = 0.0
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append(max(0.0, -delay))
        if outstanding >= MAX_OUTSTANDING:
            not_sent += 1
        else:
            outstanding += 1  # counted when created: tasks start only at the next await
            tasks.append(asyncio.create_task(one(i)))
        if proc is not None and time.perf_counter() >= next_rss:
            rss.append(proc.memory_info().rss / 2**20)
            next_rss = time.perf_counter() + 1.0
    offered_s = time.perf_counter() - start
    mark("fault_end")  # the overload ends when the offering stops; answers still drain
    await asyncio.gather(*tasks)
    return {
        "late_s": late,
        "cpu_s": time.process_time() - cpu0,
        "results": results,
        "errors": errors,
        "error_details": error_details,
        "rss_mb": rss,
        "offered_s": offered_s,
        "n": n,
        "not_sent": not_sent,
    }


def _server_ttft_p95(since_t: float, configuration: Configuration | None) -> float | None:
    """The server's own interactive TTFT p95 over the overload (what its SLO is judged on).

    The client's figure is reported too, but on a shared machine it also holds the load
    generator's own scheduling delays."""
    time.sleep(6)  # one more scrape (every 5 s) so the last answers are in
    window = max(10, int(time.time() - since_t))
    query = (
        "histogram_quantile(0.95, sum by (le) (increase("
        f'inference_time_to_first_token_seconds_bucket{{class="interactive"}}[{window}s])))'
    )
    r = httpx.get(
        f"{stack.url('prometheus', configuration)}/api/v1/query", params={"query": query}, timeout=TIMEOUT
    )
    result = r.json()["data"]["result"]
    return round(float(result[0]["value"][1]), 3) if result else None


def inference_overload(
    multiple: float = 3.0,
    seconds: float = 60.0,
    max_tokens: int = 64,
    calibrate_s: float = 8.0,
    calibrate_users: int = 64,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Offer `multiple` x the measured capacity for `seconds`: half interactive streams, half batch.

    The capacity is measured with as many users as the engine runs sequences at once (64 by
    default, --max-seqs): a full batch. With 16 users the batch was a quarter full and "3x" of
    that was about the server's real capacity: once the server got faster, a run offered 62
    requests/s and all of them were admitted (nothing overloaded, the drill void)."""
    base = stack.url("inference", configuration)
    pid = stack.pid_of("inference", configuration)
    capacity = asyncio.run(_calibrate(base, calibrate_s, calibrate_users, max_tokens))
    if capacity <= 0:
        raise ActivityFailed("inference completed nothing during calibration")
    rss_before = psutil.Process(pid).memory_info().rss / 2**20 if pid else None
    rate = multiple * capacity
    mark("fault_start")
    probe = subprocess.Popen(
        [sys.executable, "-m", "loadtests.drills.latency_probe", base, str(seconds), "10"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        # Its own session, so its own scheduling group (Linux autogroup): in the drill's group
        # it shared the CPU with the load generator, and every answer it timed carried its own
        # wait for a turn on the CPU (5.4 s of 30 s waiting runnable, measured from schedstat).
        # A client of a real deployment does not share a machine with the load.
        start_new_session=True,
    )
    out = run_on_uvloop(_overload(base, rate, seconds, max_tokens, pid))
    try:
        probed = json.loads(probe.communicate(timeout=120)[0] or "{}")
    except (subprocess.TimeoutExpired, ValueError):
        probe.kill()
        probed = {}
    heads = probed.get("heads", [])
    own_wait = probed.get("own_wait_s", [])
    # The probe's own wait for a CPU while each rejection was out (its schedstat): the part of
    # the head's time that was the probe not running, not the server answering late.
    rejected_wait = [w for (status, *_), w in zip(heads, own_wait, strict=False) if status in (429, 503)]
    less_wait = [
        took - w for (status, took, *_), w in zip(heads, own_wait, strict=False) if status in (429, 503)
    ]
    # Every rejection the probe timed: the doomed half (deadline 1 ms, always refused) and any
    # plain request the overload shed (latency_probe.py)
    probe_rejected = [took for status, took, *_ in heads if status in (429, 503)]
    shed = [took for status, took, doomed, *_ in heads if status in (429, 503) and not doomed]
    doomed_admitted = sum(1 for status, _, doomed, *_ in heads if doomed and status not in (429, 503))
    results = out["results"]
    statuses = Counter(status for _, status, *_ in results)
    rejected = [r for r in results if r[1] in (429, 503)]
    admitted_ttft = [r[3] for r in results if r[0] and r[1] == 200 and r[3] is not None]
    figures = {
        "capacity_rps": round(capacity, 1),
        "calibrate_users": calibrate_users,
        "offered_rps": round(out["n"] / out["offered_s"], 1),
        "offered_over_capacity": round(out["n"] / out["offered_s"] / capacity, 2),
        "requests": out["n"],
        "not_sent_client_full": out["not_sent"],
        "admitted": statuses[200],
        "rejected": len(rejected),
        "rejected_without_retry_after": sum(1 for r in rejected if not r[4]),
        "server_errors_5xx": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "client_errors": dict(out["errors"]),
        "client_error_details": out["error_details"][:5],
        # Rejections timed by the probe in its own process (what the verdict uses) and by the
        # load generator, whose own backlog of open streams inflates every figure it takes.
        "probe_requests": len(heads),
        "probe_rejected": len(probe_rejected),
        "probe_errors": probed.get("errors", "no answer from the probe"),
        "reject_p99_ms": round(1000 * (_pct(probe_rejected, 0.99) or 0.0), 1),
        "reject_p50_ms": round(1000 * (_pct(probe_rejected, 0.50) or 0.0), 1),
        "probe_autogroup_nice": probed.get("autogroup_nice"),  # None: the probe could not take it
        "probe_own_wait_p99_ms": round(1000 * (_pct(rejected_wait, 0.99) or 0.0), 1),
        "reject_p99_less_own_wait_ms": round(1000 * (_pct(less_wait, 0.99) or 0.0), 1),
        "probe_shed": len(shed),  # plain probe requests the overload shed, and the largest wait
        "probe_shed_max_ms": round(1000 * max(shed, default=0.0), 1),
        "probe_doomed_admitted": doomed_admitted,  # deadline 1 ms yet admitted: should be 0
        "loadgen_reject_p99_ms": round(1000 * (_pct([r[2] for r in rejected], 0.99) or 0.0), 1),
        # The generator's own CPU per offered request and how late it sent (run_on_uvloop): a
        # generator behind its schedule sends in clumps, bursts the server takes in order.
        "loadgen_cpu_ms_per_request": round(1000 * out["cpu_s"] / max(1, out["n"]), 2),
        "loadgen_late_p99_ms": round(1000 * (_pct(out["late_s"], 0.99) or 0.0), 1),
        # The server's scheduling group's niceness during the drill (--sched-group-nice)
        "server_group_nice": _autogroup_nice(pid),
        "client_ttft_p95_s": round(_pct(admitted_ttft, 0.95) or 0.0, 3),
        "interactive_ttft_p95_s": _server_ttft_p95(RECORD.marks["fault_start"], configuration),
        "rss_before_mb": round(rss_before or 0.0, 1),
        "rss_max_mb": round(max(out["rss_mb"], default=0.0), 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }
    for k, v in figures.items():
        figure(k, v)
    mark("load drained")  # every answer is in and counted
    return figures


async def _storm(
    base: str, clients: int, waves: int, tokens_before_drop: int, max_tokens: int, pause_s: float
) -> dict:
    dropped = completed = refused = 0
    async with httpx.AsyncClient(base_url=base, timeout=TIMEOUT) as http:

        async def one(i: int) -> None:
            nonlocal dropped, completed, refused
            body = {"prompt": "storm", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
            headers = {"Authorization": f"Bearer {KEYS[i % 2]}"}
            async with http.stream("POST", "/v1/completions", json=body, headers=headers) as r:
                if r.status_code != 200:
                    refused += 1
                    return
                seen = 0
                async for line in r.aiter_lines():
                    seen += line.startswith("data:")
                    if seen >= tokens_before_drop:
                        dropped += 1
                        return  # leaving the block closes the connection mid-stream
                completed += 1

        errors: Counter[str] = Counter()
        for wave in range(waves):
            if wave:
                await asyncio.sleep(pause_s)  # the tenants' request buckets refill between waves
            for outcome in await asyncio.gather(*(one(i) for i in range(clients)), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    errors[type(outcome).__name__] += 1
    return {"dropped": dropped, "completed": completed, "refused": refused, "errors": dict(errors)}


def disconnect_storm(
    clients: int = 64,
    waves: int = 5,
    tokens_before_drop: int = 4,
    max_tokens: int = 256,
    pause_s: float = 2.0,
    configuration: Configuration | None = None,
) -> dict[str, Any]:
    """Waves of streaming clients that hang up a few tokens into long generations."""
    mark("fault_start")
    base = stack.url("inference", configuration)
    out = asyncio.run(_storm(base, clients, waves, tokens_before_drop, max_tokens, pause_s))
    mark("fault_end")
    figure("streams_dropped", out["dropped"])
    figure("streams_refused", out["refused"])
    if out["dropped"] < clients * waves // 2:
        raise ActivityFailed(
            f"only {out['dropped']} of {clients * waves} streams were dropped mid-generation: {out}"
        )
    return out
