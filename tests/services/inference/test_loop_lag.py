"""The server's event-loop lag is measured: a callback that holds the loop shows as lag."""

from __future__ import annotations

import asyncio
import time

from services.inference.app import LOOP_LAG, watch_loop_lag


def _observed() -> tuple[float, float]:
    """(count, sum) of inference_event_loop_lag_seconds so far."""
    count = total = 0.0
    for metric in LOOP_LAG.collect():
        for s in metric.samples:
            if s.name.endswith("_count"):
                count = s.value
            elif s.name.endswith("_sum"):
                total = s.value
    return count, total


async def test_a_loop_held_30_ms_is_observed_as_that_much_lag() -> None:
    count0 = _observed()[0]
    watcher = asyncio.create_task(watch_loop_lag(period_s=0.001))
    try:
        for _ in range(1000):  # the watcher has started and observed once
            await asyncio.sleep(0.001)
            if _observed()[0] > count0:
                break
        count1, sum1 = _observed()
        assert count1 > count0
        time.sleep(0.03)  # hold the loop: the watcher's timer (due in 1 ms) waits for us
        for _ in range(1000):
            await asyncio.sleep(0.001)
            if _observed()[1] - sum1 >= 0.02:
                break
        assert _observed()[1] - sum1 >= 0.02  # at least 30 ms - 1 ms of lag, give or take the clock
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
