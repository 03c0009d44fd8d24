"""The live violation counters count exactly the requests a polite crawler would not make."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client import REGISTRY

from services.websim import SimConfig, WebSim, run_in_thread


def counter(name: str, agent: str) -> float:
    # labelled by the robots product token (lower case), as robots groups match agents
    return REGISTRY.get_sample_value(f"{name}_total", {"agent": agent.lower()}) or 0.0


def fetch(port: int, host: str, path: str, agent: str) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": host, "User-Agent": agent}
    )
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except OSError:
        pass  # 4xx/5xx and dropped connections still reach the log


def test_disallowed_paths_and_too_close_requests_are_counted_per_agent():
    sim = WebSim(SimConfig(hosts=60, seed=3))
    agent = "WatchTestBot"
    disallowed = allowed = delayed = None
    for name in (f"h{i:04d}.sim.test" for i in range(60)):
        policy = sim.host_policy(name)
        if disallowed is None and policy["robots"] == "normal" and not sim.allowed(name, "/private/x", agent):
            disallowed = name
        if delayed is None and (sim.required_delay(name, agent) or 0) >= 0.05:
            delayed = name
        if allowed is None and policy["robots"] == "404":
            allowed = name
    assert disallowed and delayed and allowed
    robots_before = counter("websim_robots_violations", agent)
    polite_before = counter("websim_politeness_violations", agent)
    with run_in_thread(sim, port=0) as port:
        fetch(port, disallowed, "/private/x", agent)  # one robots violation
        fetch(port, allowed, "/private/x", agent)  # 404 robots: allowed
        fetch(port, delayed, "/", agent)
        fetch(port, delayed, "/", agent)  # back to back: one politeness violation
        time.sleep(sim.required_delay(delayed, agent) + 0.05)
        fetch(port, delayed, "/", agent)  # after the delay: fine
    assert counter("websim_robots_violations", agent) - robots_before == 1
    assert counter("websim_politeness_violations", agent) - polite_before == 1


def test_following_a_robots_redirect_is_not_a_violation():
    sim = WebSim(SimConfig(hosts=200, seed=1))
    agent = "ProvingGroundBot/0.1"  # on h0101 its robots group disallows the redirect target
    host = "h0101.sim.test"
    assert sim.host_policy(host)["robots"] == "redirect"
    before = counter("websim_robots_violations", agent)
    with run_in_thread(sim, port=0) as port:
        fetch(port, host, "/robots.txt", agent)  # urllib follows the redirect on the same Host
    hops = [e for e in sim.entries() if e["host"] == host]
    assert len(hops) >= 2 and hops[0]["status"] in (301, 302, 307, 308), hops
    assert sim.judge(user_agent=agent)["robots_violations"] == 0
    assert counter("websim_robots_violations", agent) == before
