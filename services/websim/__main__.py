"""python -m services.websim: serve a generated web on loopback until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

from pydantic import Field

from libs.service.settings import ServiceSettings, load_settings
from services.websim.config import ConfigError, SimConfig
from services.websim.server import serve
from services.websim.sim import WebSim


class WebsimSettings(ServiceSettings):
    port: int = Field(8090, description="TCP port to listen on (0 = any free port)")
    hosts: int = Field(200, description="number of simulated hosts (h0000.sim.test ...)")
    seed: int = Field(1, description="generator seed: same seed and knobs -> byte-identical site")
    min_pages: int = Field(3, description="fewest pages per host (power law between min and max)")
    max_pages: int = Field(15, description="most pages per host")
    crawl_delay_rate: float = Field(0.3, description="share of hosts whose robots.txt sets a Crawl-delay")
    crawl_delay_min: float = Field(0.05, description="smallest Crawl-delay in seconds")
    crawl_delay_max: float = Field(0.3, description="largest Crawl-delay in seconds")
    trap_rate: float = Field(0.03, description="share of hosts with an infinite calendar trap")
    transient_rate: float = Field(0.03, description="share of pages answering 429/503 + Retry-After first")
    slow_page_rate: float = Field(0.05, description="share of pages answering slowly")
    slow_page_max_s: float = Field(0.5, description="longest slow-page delay in seconds")
    huge_page_rate: float = Field(0.005, description="share of multi-MB pages")
    robots_slow_s: float = Field(1.0, description="delay of the 'slow' robots.txt variant in seconds")


_KNOBS = (
    "hosts",
    "seed",
    "min_pages",
    "max_pages",
    "crawl_delay_rate",
    "crawl_delay_min",
    "crawl_delay_max",
    "trap_rate",
    "transient_rate",
    "slow_page_rate",
    "slow_page_max_s",
    "huge_page_rate",
    "robots_slow_s",
)


async def _serve(sim: WebSim, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(sim, host, port) as bound:
        print(
            f"websim: {sim.config.hosts} hosts (seed {sim.config.seed}) listening on http://{host}:{bound}",
            flush=True,
        )
        print(
            f"websim: crawl with --resolve '*.sim.test={host}:{bound}'; admin API: http://{host}:{bound}/ "
            f"(Host admin.sim.test or the bare IP); seeds http://h0000.sim.test/ ...",
            flush=True,
        )
        await stop.wait()
    print("websim: stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(WebsimSettings, argv, env_prefix="PG_WEBSIM_", prog="python -m services.websim")
    try:
        config = SimConfig(**{k: getattr(settings, k) for k in _KNOBS})
    except ConfigError as exc:
        print(f"error: --{exc.field.replace('_', '-')}: {str(exc).split(': ', 1)[1]}", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(f"websim: generating {config.hosts} hosts ...", flush=True)
    sim = WebSim(config)
    print(f"websim: {len(sim.web.by_id)} pages generated in {time.monotonic() - started:.1f}s", flush=True)
    try:
        asyncio.run(_serve(sim, settings.host, settings.port))
    except OSError as exc:
        where = f"{settings.host}:{settings.port}"
        print(f"error: --port: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
