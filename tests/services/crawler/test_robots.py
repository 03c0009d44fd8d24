"""robots.txt policy (RFC 9309 outcomes) and its TTL cache; politeness and retry arithmetic."""

from __future__ import annotations

import random

from services.crawler.politeness import HostSlot, parse_retry_after
from services.crawler.retry import RetryPolicy, is_retryable_status
from services.crawler.robots import (
    MAX_ROBOTS_BYTES,
    MAX_ROBOTS_REDIRECTS,
    ROBOTS_ATTEMPTS,
    ROBOTS_TIMEOUT_ATTEMPTS,
    RobotsCache,
    RobotsFetch,
    RobotsMode,
    policy_from_response,
    policy_from_shared,
)
from services.crawler.settings import PolitenessConfig, RetryConfig

from .test_partitions import FakeClock

TOKEN = "ProvingGroundBot"
RULES = b"""User-agent: otherbot
Disallow: /

User-agent: provinggroundbot
Disallow: /private
Allow: /private/ok$
Disallow: /*.pdf$
Crawl-delay: 0.5

User-agent: *
Disallow: /everything
"""


def test_rules_most_specific_match_and_allow_on_tie() -> None:
    p = policy_from_response(200, RULES, TOKEN)
    assert p.mode is RobotsMode.RULES and p.crawl_delay == 0.5
    assert not p.allows("http://h/private/x")
    assert p.allows("http://h/private/ok")
    assert not p.allows("http://h/private/ok/more")
    assert not p.allows("http://h/doc.pdf") and p.allows("http://h/doc.pdf?x=1")
    assert p.allows("http://h/everything")  # the * group does not apply: ours is named
    tie = policy_from_response(200, b"User-agent: *\nDisallow: /a\nAllow: /a\n", TOKEN)
    assert tie.allows("http://h/a")


def test_status_semantics() -> None:
    for status in (400, 401, 403, 404, 410):
        assert policy_from_response(status, b"", TOKEN).allows("http://h/anything")
    for status in (429, 500, 502, 503):
        assert not policy_from_response(status, b"", TOKEN).allows("http://h/anything")
    assert not policy_from_response(None, b"", TOKEN, error="connection refused").allows("http://h/")


def test_only_the_first_500_kib_is_parsed() -> None:
    body = b"User-agent: *\nDisallow: /early\n" + b"#" * MAX_ROBOTS_BYTES + b"\nDisallow: /late\n"
    p = policy_from_response(200, body, TOKEN)
    assert not p.allows("http://h/early") and p.allows("http://h/late")


def test_cache_expires_error_policies_sooner() -> None:
    cache = RobotsCache(ttl=3600, error_ttl=0.0001)
    cache.put("good", policy_from_response(200, RULES, TOKEN))
    cache.put("bad", policy_from_response(503, b"", TOKEN))
    import time

    time.sleep(0.01)
    assert cache.get("good") is not None and cache.get("bad") is None


def test_host_slot_delay_components_and_retry_after() -> None:
    slot = HostSlot("h", PolitenessConfig(min_delay=0.1, adaptive_factor=2.0, max_delay=10))
    slot.crawl_delay = 0.3
    assert slot.delay == 0.3
    slot.on_start(100.0)
    slot.on_finish(100.5, 0.5, 200)  # slow answer: adaptive 2 x 0.5 s
    assert slot.delay == 1.0 and slot.next_eligible == 101.5
    slot.on_start(101.5)
    wait = slot.on_finish(101.6, 0.1, 429, retry_after=5)
    assert wait == 5 and slot.next_eligible == 106.6
    assert not slot.can_start(106.0) and slot.can_start(106.6)


def test_retry_after_is_waited_exactly_and_no_backoff_is_multiplied_on_top() -> None:
    """With Retry-After the wait is exactly max(Retry-After, the host's delay), however often the
    server says it; without it our own backoff doubles (a 5xx waits longer than a success)."""
    slot = HostSlot("h", PolitenessConfig(min_delay=0.25, adaptive_factor=0.0, max_delay=30))
    now = 100.0
    for status, retry_after, expected in [
        (429, 1.0, 1.0),  # the server's word
        (503, 1.0, 1.0),  # again: not 2 s (no multiplier grown on top)
        (429, 0.1, 0.25),  # less than the host's own gap: the gap
        (200, None, 0.25),
        (503, None, 0.5),  # no Retry-After: exponential backoff
        (500, None, 1.0),
        (502, 2.0, 2.0),  # said: exactly that, the multiplier (4) not applied on top
        (200, None, 0.5),  # success halves it
        (200, None, 0.25),
        (200, None, 0.25),
    ]:
        slot.on_start(now)
        wait = slot.on_finish(now + 0.05, 0.05, status, retry_after=retry_after)
        assert wait == expected, (status, retry_after, wait)
        assert slot.next_eligible >= now + 0.05 + expected
        now = slot.next_eligible
    assert slot.backoff_multiplier == 1.0


def test_retry_after_parsing_and_backoff() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 25 Nov 2026 10:00:10 GMT", now_wall=1795600800.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert all(is_retryable_status(s) for s in (429, 500, 502, 503, 504))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 410, 418, 501))
    policy = RetryPolicy(RetryConfig(max_attempts=3, base_delay=1.0, max_delay=4.0), random.Random(1))
    waits = [policy.backoff(n) for n in range(1, 8) for _ in range(50)]
    assert all(0 <= w <= 4.0 for w in waits) and max(waits) > 2.0  # full jitter up to the cap
    assert policy.backoff(1, retry_after=3.0) == 3.0  # the server's word, no jitter on top
    assert policy.backoff(7, retry_after=0.5) == 0.5
    assert policy.should_retry(2) and not policy.should_retry(3)


def test_a_utf8_byte_order_mark_does_not_turn_the_rules_off() -> None:
    body = b"\xef\xbb\xbfUser-agent: *\nDisallow: /secret\nCrawl-delay: 2\n"
    p = policy_from_response(200, body, TOKEN)
    assert p.mode is RobotsMode.RULES
    assert not p.allows("http://h/secret") and p.allows("http://h/open")
    assert p.crawl_delay == 2.0


# -- the robots.txt fetch protocol (RobotsFetch): hops, retries, the final answer --------------


def test_robots_fetch_follows_redirects_across_authorities_up_to_five_hops() -> None:
    proto = RobotsFetch(TOKEN)
    url, hops = "http://a.test/robots.txt", 0
    for n in range(1, MAX_ROBOTS_REDIRECTS + 1):
        step = proto.answered("a.test", url, hops, 301, f"http://b{n}.test/robots.txt", b"")
        assert step.redirect and step.policy is None
        assert proto.owed("a.test") == (f"http://b{n}.test/robots.txt", n)
        url, hops = proto.owed("a.test") or ("", 0)
        proto.taken("a.test")
        assert proto.owed("a.test") is None
    step = proto.answered("a.test", url, hops, 301, "http://too-far.test/robots.txt", b"")
    assert step.policy is not None and step.policy.mode is RobotsMode.DISALLOW_ALL  # a 6th hop: unreachable
    assert proto.owed("a.test") is None


def test_robots_fetch_retries_transient_failures_then_disallows_all() -> None:
    proto = RobotsFetch(TOKEN)
    for attempt in range(1, ROBOTS_ATTEMPTS):
        step = proto.answered("h", "http://h/robots.txt", 0, 503, None, b"")
        assert step.retry_attempt == attempt and proto.owed("h") is None  # hop 0: asked from the start
    step = proto.answered("h", "http://h/robots.txt", 0, 503, None, b"")
    assert step.policy is not None and step.policy.is_error
    # a redirect target that times out is asked again as such, and the count starts over per host
    step = proto.failed("h", "http://other/robots.txt", 2, "timeout", retryable=True)
    assert step.retry_attempt == 1 and proto.owed("h") == ("http://other/robots.txt", 2)


def test_robots_fetch_final_answer_is_shared_and_reads_back_the_same() -> None:
    proto = RobotsFetch(TOKEN)
    step = proto.answered("h", "http://h/robots.txt", 0, 200, None, RULES)
    assert step.policy is not None and step.shared is not None
    again = policy_from_shared(step.shared, TOKEN)
    assert again.mode is RobotsMode.RULES and again.crawl_delay == step.policy.crawl_delay == 0.5
    assert again.allows("http://h/private/ok") and not again.allows("http://h/private/x")
    failed = proto.failed("h", "http://h/robots.txt", 0, "refused", retryable=False)
    assert failed.shared is not None and policy_from_shared(failed.shared, TOKEN).is_error


def test_robots_fetch_waits_out_a_host_that_does_not_answer_for_its_patience() -> None:
    """RFC 9309 2.3.1.4: unreachable means disallow-all *for now*. No answer (a timeout, often our
    own overload) is asked again past ROBOTS_ATTEMPTS until `patience` seconds have passed since
    the first failure; only then is disallow-all final (and the host's URLs fail)."""
    clock = FakeClock()
    start = clock.t
    proto = RobotsFetch(TOKEN, patience=30.0, clock=clock)
    for attempt in range(1, ROBOTS_TIMEOUT_ATTEMPTS + 2):  # tries enough, the patience not yet
        step = proto.failed("h", "http://h/robots.txt", 0, "TimeoutError: ", retryable=True)
        assert step.policy is None and step.retry_attempt == attempt  # no answer yet: URLs wait
        clock.t += 2.0
    clock.t = start + 30.0
    step = proto.failed("h", "http://h/robots.txt", 0, "TimeoutError: ", retryable=True)
    assert step.policy is not None and step.policy.is_error and step.shared is not None
    # the count and the patience start over for the next failure of the host
    step = proto.failed("h", "http://h/robots.txt", 0, "TimeoutError: ", retryable=True)
    assert step.retry_attempt == 1


def test_robots_fetch_answer_after_timeouts_is_the_file_and_attempts_stay_bounded() -> None:
    clock = FakeClock()
    proto = RobotsFetch(TOKEN, patience=30.0, clock=clock)
    for _ in range(ROBOTS_ATTEMPTS + 1):  # more than the attempts an answered 5xx gets
        assert proto.failed("h", "http://h/robots.txt", 0, "x", retryable=True, timeout=True).policy is None
    step = proto.answered("h", "http://h/robots.txt", 0, 200, None, RULES)
    assert step.policy is not None and step.policy.mode is RobotsMode.RULES
    # an answered 5xx is the server's own word: ROBOTS_ATTEMPTS tries, no patience
    for _ in range(ROBOTS_ATTEMPTS - 1):
        assert proto.answered("s", "http://s/robots.txt", 0, 503, None, b"").policy is None
    assert proto.answered("s", "http://s/robots.txt", 0, 503, None, b"").policy is not None
    # however fast failures come, max_attempts bounds the tries within the patience
    fast = RobotsFetch(TOKEN, timeout_attempts=3, patience=1e9, max_attempts=7, clock=clock)
    steps = [fast.failed("f", "http://f/robots.txt", 0, "x", retryable=True, timeout=True) for _ in range(7)]
    assert [s.policy is None for s in steps] == [True] * 6 + [False]


def test_robots_fetch_tells_a_timeout_from_a_refused_connection() -> None:
    """A refused or dropped connection is the host's own doing: ROBOTS_ATTEMPTS tries, no patience
    (the engine passes `timeout`, or the fetcher's error text starts with the exception's class)."""
    proto = RobotsFetch(TOKEN, patience=1e9, clock=FakeClock())
    for host, error in [("d", "ConnectionDropped: closed"), ("r", "ClientConnectorError: refused")]:
        steps = [proto.failed(host, f"http://{host}/robots.txt", 0, error, retryable=True) for _ in range(3)]
        assert [s.policy is None for s in steps] == [True] * (ROBOTS_ATTEMPTS - 1) + [False]
    for error in ("TimeoutError: ", "ConnectionTimeoutError: connect", "SocketTimeoutError: read"):
        steps = [proto.failed("t", "http://t/robots.txt", 0, error, retryable=True) for _ in range(9)]
        assert all(s.policy is None for s in steps), error
        proto.forget("t")
