"""Drills 1, 2 and 3 at small scale against a real stack, as `make drills` runs them.

One launcher (deploy/launch.py, what `make run REDIS=1` runs, without inference) on shifted
ports and a temporary var dir; each drill kills or stops a real process and must PASS: the
service comes back (or rides the outage out), the crawl finishes, no page event is lost or
indexed twice, and websim judges the crawl polite. The alert steps (fire within N s, resolve
after a 2-minute window) are left to `make drills`: how soon Prometheus scrapes, evaluates and
fires depends on the machine's load, so in `make test` they failed on a busy 2-core machine
while every invariant held. The rules' logic is proven by `promtool test rules`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.topology import local_services
from libs.testkit.net import free_port_offset
from loadtests.drills import runner
from tests.conftest import free_port, need_binary
from tests.launched import launched

pytestmark = pytest.mark.slow

SERVICES = "redis,websim,toxiproxy,dedup,crawler,prometheus"


def free_offset() -> int:
    return free_port_offset([p for s in local_services() for p in s.ports] + [9097], start=4100, step=191)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    need_binary("prometheus")
    need_binary("redis-server")
    var_dir = tmp_path_factory.mktemp("drill-stack")
    offset = free_offset()
    args = ["--redis", "--only", SERVICES, "--port-offset", str(offset), "--metrics-port", str(free_port())]
    with launched([*args, "--var-dir", str(var_dir)], stop_within_s=90):
        yield {"port_offset": offset, "var_dir": str(var_dir)}


@pytest.mark.parametrize("name", ["crawler-kill", "dedup-kill", "redis-down"])
def test_drill_passes(stack: dict, name: str, tmp_path: Path):
    alert_steps = ("alert-resolves", "restart-alert-fires", "buffered-alert-fires")
    outcome = runner.run(name, stack, tmp_path, skip=alert_steps)
    assert outcome.verdict == "PASS", "\n".join(outcome.evidence) + f"\n{outcome.figures}"
    assert outcome.figures["events_lost"] == 0
    assert outcome.figures.get("events_twice", 0) == 0
    assert (tmp_path / name / "journal.json").exists() and (tmp_path / name / "report.md").exists()
