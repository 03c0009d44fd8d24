"""Open-loop load: requests leave at scheduled times whether or not earlier ones have answered.

A closed loop (N users, each waiting for its answer) slows down with the server and so hides
queueing; an open loop keeps the offered rate, which is what a queueing model assumes. Arrivals
are Poisson (seeded, so a schedule is reproducible). Each outcome records how late it left
(`lag`): when the client itself falls behind, the offered load was not what was planned, and
the report says so.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Call:
    """One planned request."""

    at: float  # seconds after the start of the schedule
    path: str
    body: dict[str, Any]
    tenant: str
    klass: str = ""
    stream: bool = False
    step: int = 0


@dataclass
class Outcome:
    call: Call
    sent_at: float = 0.0  # seconds after the start
    status: int = 0  # 0: no HTTP answer (connection error, timeout)
    latency: float = 0.0  # client: sent to last byte
    ttft: float | None = None  # client-measured when streaming, else the server's timing
    timing: dict[str, Any] = field(default_factory=dict)  # the server's timing block, seconds
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    @property
    def lag(self) -> float:
        return self.sent_at - self.call.at

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def rejected(self) -> bool:
        return self.status in (429, 503)


def poisson(rate: float, duration: float, rng: random.Random, start: float = 0.0) -> list[float]:
    """Arrival times of a Poisson process of `rate` per second over [start, start + duration)."""
    out: list[float] = []
    if rate <= 0:
        return out
    t = start + rng.expovariate(rate)
    while t < start + duration:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def _timing(block: dict[str, Any] | None) -> dict[str, Any]:
    """The server's timing block in seconds (it sends milliseconds)."""
    if not block:
        return {}
    return {
        k.removesuffix("_ms"): (v / 1000.0 if isinstance(v, int | float) else None) for k, v in block.items()
    }


async def _one(session: aiohttp.ClientSession, base: str, call: Call, key: str, t0: float) -> Outcome:
    out = Outcome(call)
    start = time.perf_counter()
    out.sent_at = start - t0
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with session.post(f"{base}{call.path}", json=call.body, headers=headers) as resp:
            out.status = resp.status
            if resp.status != 200:
                await resp.read()
            elif call.stream:
                last: dict[str, Any] | None = None
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        out.error = str(event["error"].get("type"))
                    elif out.ttft is None and event["choices"][0].get("token_id") is not None:
                        out.ttft = time.perf_counter() - start
                    last = event
                if last is None or "usage" not in last:
                    out.error = out.error or "stream ended without usage"
                else:
                    out.prompt_tokens = last["usage"]["prompt_tokens"]
                    out.completion_tokens = last["usage"].get("completion_tokens", 0)
                    out.timing = _timing(last.get("timing"))
            else:
                body = await resp.json()
                usage = body.get("usage", {})
                out.prompt_tokens = usage.get("prompt_tokens", 0)
                out.completion_tokens = usage.get("completion_tokens", 0)
                out.timing = _timing(body.get("timing"))
                out.ttft = out.timing.get("ttft")
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as exc:
        out.error = type(exc).__name__
    out.latency = time.perf_counter() - start
    return out


async def _run(base: str, calls: Sequence[Call], keys: dict[str, str], timeout: float) -> list[Outcome]:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        t0 = time.perf_counter()
        tasks = []
        for call in sorted(calls, key=lambda c: c.at):
            delay = call.at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, base, call, keys[call.tenant], t0)))
        return list(await asyncio.gather(*tasks))


def run(base: str, calls: Sequence[Call], keys: dict[str, str], timeout: float = 300.0) -> list[Outcome]:
    """Send every call at its time; wait for every answer (each bounded by `timeout`)."""
    return asyncio.run(_run(base.rstrip("/"), calls, keys, timeout))


async def _closed(
    base: str, make_call: Callable[[int], Call], keys: dict[str, str], workers: int, duration: float
) -> list[Outcome]:
    out: list[Outcome] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        t0 = time.perf_counter()

        async def worker(w: int) -> None:
            i = 0
            while time.perf_counter() - t0 < duration:
                call = make_call(w * 1_000_000 + i)
                out.append(await _one(session, base, call, keys[call.tenant], t0))
                i += 1

        await asyncio.gather(*(worker(w) for w in range(workers)))
    return out


def closed_loop(
    base: str, make_call: Callable[[int], Call], keys: dict[str, str], workers: int, duration: float
) -> list[Outcome]:
    """`workers` loops, each sending its next request when the last answered, for `duration` s
    (the last requests finish after it): a saturating load that adapts to the server's speed."""
    return asyncio.run(_closed(base.rstrip("/"), make_call, keys, workers, duration))
