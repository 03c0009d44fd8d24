"""The crawl's lease reaper outlives a store that is away for a moment.

Before, any error but a full disk from `aexpire_leases` (a Redis failover's ConnectionError)
ended the reaper task for the rest of the crawl: a URL whose lease ran out afterwards never came
back, and a crawl waiting on it never finished. The engine's own coroutine is run here against
a store that fails once and then hands back an expired lease."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from services.crawler.engine import Crawl


class FlakyStore:
    def __init__(self) -> None:
        self.calls = 0
        self.handed_back = asyncio.Event()

    async def aexpire_leases(self, now: float) -> list[int]:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("Redis is loading the dataset in memory")
        if self.calls == 2:
            self.handed_back.set()
            return [7]
        return []

    async def acounts(self) -> dict[str, int]:
        return {"DISCOVERED": 1, "RETRYABLE": 0}


async def test_the_reaper_goes_on_after_a_store_error_and_hands_the_lease_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore()
    expired: list[Any] = []
    reloads: list[bool] = []
    crawl = SimpleNamespace(
        config=SimpleNamespace(lease_seconds=0.04),  # a tick every 10 ms
        paused_reason=None,
        _storage_waiters=[],
        store=store,
        crawl_id="c1",
        _count_expired=expired.append,
        frontier=SimpleNamespace(load_pending=lambda: reloads.append(True)),
    )
    reaper = asyncio.create_task(Crawl._reaper(crawl))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(store.handed_back.wait(), timeout=30)
        while not expired:  # the tick that got the lease records it before its next sleep
            assert not reaper.done(), reaper
            await asyncio.sleep(0.01)
    finally:
        reaper.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reaper
    assert store.calls >= 2
    assert expired == [[7]] and reloads == [True]  # once: later ticks found nothing expired
    assert "handing back expired leases failed" in caplog.text
