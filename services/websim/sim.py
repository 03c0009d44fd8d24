"""WebSim: the simulated web's state and questions (generate, log, faults, truth).

Serving it is server.py's (`serve`, `run_in_thread`): sim imports no server code, so the
layers go one way, __main__ -> server -> admin -> sim (a contract in pyproject.toml)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any

from services.websim import judge, truth
from services.websim.config import DEFAULT_USER_AGENT, SimConfig
from services.websim.faults import Fault, Faults
from services.websim.generator import generate
from services.websim.requestlog import RequestLog
from services.websim.watch import ViolationWatch
from services.websim.web import Page, Web, canonical_target, host_name, normalize_host, origin_form


class WebSim:
    """A deterministic simulated web. Same SimConfig -> byte-identical site."""

    default_user_agent = DEFAULT_USER_AGENT

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        self.web: Web = generate(self.config)
        self.log = RequestLog()
        self.watch = ViolationWatch(self.web)
        self.faults = Faults(self.config.seed)
        self._attempts: Counter[str] = Counter()
        self._attempts_lock = threading.Lock()

    # -- state ---------------------------------------------------------------------------------

    def count_attempt(self, page_id: str) -> int:
        with self._attempts_lock:
            self._attempts[page_id] += 1
            return self._attempts[page_id]

    def reset(self) -> None:
        """Forget the log and transient-page attempts (faults stay)."""
        self.log.clear()
        self.watch.clear()
        with self._attempts_lock:
            self._attempts.clear()

    def entries(self, since: int = 0, host: str | None = None) -> list[dict[str, Any]]:
        """The request log (see requestlog.py for the fields)."""
        return self.log.entries(since=since, host=host)

    def set_fault(
        self,
        host: str = "*",
        *,
        error_rate: float = 0.0,
        latency_ms: float = 0.0,
        drop_rate: float = 0.0,
        status: int = 500,
        retry_after: int | None = None,
    ) -> None:
        self.faults.set(Fault(host.lower(), error_rate, latency_ms, drop_rate, status, retry_after))

    def clear_faults(self) -> None:
        self.faults.clear()

    # -- the web as data -------------------------------------------------------------------------

    def seeds(self, n: int | None = None) -> list[str]:
        """Home pages of the first n hosts (all hosts when n is None)."""
        count = self.config.hosts if n is None else min(n, self.config.hosts)
        return [f"http://{host_name(i)}/" for i in range(count)]

    def hosts(self) -> list[str]:
        return list(self.web.hosts)

    def host_policy(self, host: str) -> dict[str, Any]:
        h = self.web.host(normalize_host(host))
        if h is None:
            raise KeyError(host)
        return {
            "host": h.name,
            "robots": h.robots_kind,
            "robots_status": h.robots_status if h.robots_kind != "unreachable" else None,
            "crawl_delay": truth.required_delay(self.web, h.name, self.default_user_agent),
            "page_count": len(h.pages),
            "redirects": len(h.redirects),
            "trap": h.trap_start is not None,
            "sitemaps": list(h.robots.sitemaps) if h.robots else [],
            "robots_slow_s": self.config.robots_slow_s if h.robots_kind == "slow" else None,
        }

    def host_pages(self, host: str) -> list[dict[str, Any]]:
        h = self.web.host(normalize_host(host))
        if h is None:
            raise KeyError(host)
        return [page_info(p) for p in h.pages.values()]

    def page_info(self, page_id: str) -> dict[str, Any] | None:
        page = self.web.page(page_id)
        return None if page is None else page_info(page)

    def required_delay(self, host: str, user_agent: str = DEFAULT_USER_AGENT) -> float | None:
        """Crawl-delay that robots.txt of `host` sets for `user_agent`'s group, or None."""
        return truth.required_delay(self.web, normalize_host(host), user_agent)

    def allowed(self, host: str, raw_path: str, user_agent: str = DEFAULT_USER_AGENT) -> bool:
        """Would a robots-respecting crawler be allowed to request raw_path on host?"""
        return truth.allowed(
            self.web, normalize_host(host), canonical_target(origin_form(raw_path)), user_agent
        )

    def ground_truth(
        self,
        seeds: Iterable[str],
        user_agent: str = DEFAULT_USER_AGENT,
        max_depth: int | None = None,
        max_pages: int | None = None,
        max_redirects: int = 5,
    ) -> set[str]:
        """Page ids a polite crawler from `seeds` fetches successfully; rules in truth.py."""
        return truth.ground_truth(self.web, list(seeds), user_agent, max_depth, max_pages, max_redirects)

    # -- judging a crawl from the log (judge.py) --------------------------------------------------

    def robots_violations(
        self, entries: list[dict[str, Any]] | None = None, user_agent: str = DEFAULT_USER_AGENT
    ) -> list[dict[str, Any]]:
        return judge.robots_violations(self.web, self.entries() if entries is None else entries, user_agent)

    def politeness_violations(
        self,
        entries: list[dict[str, Any]] | None = None,
        min_delay: float = 0.0,
        tolerance: float = 0.005,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> list[dict[str, Any]]:
        return judge.politeness_violations(
            self.web, self.entries() if entries is None else entries, min_delay, tolerance, user_agent
        )

    def duplicate_fetches(
        self, entries: list[dict[str, Any]] | None = None, user_agent: str | None = DEFAULT_USER_AGENT
    ) -> list[dict[str, Any]]:
        return judge.duplicate_fetches(self.entries() if entries is None else entries, user_agent)

    def fetched_pages(
        self, entries: list[dict[str, Any]] | None = None, user_agent: str | None = DEFAULT_USER_AGENT
    ) -> set[str]:
        return judge.fetched_pages(self.entries() if entries is None else entries, user_agent)

    def judge(
        self, min_delay: float = 0.0, tolerance: float = 0.005, user_agent: str = DEFAULT_USER_AGENT
    ) -> dict[str, Any]:
        return judge.report(self.web, self.entries(), min_delay, tolerance, user_agent)


def page_info(page: Page) -> dict[str, Any]:
    return {
        "page_id": page.pid,
        "url": f"http://{page.host}{page.path}",
        "kind": page.kind,
        "noindex": page.noindex,
        "nofollow": page.nofollow,
        "malformed": page.malformed,
        "charset": page.charset,
        "slow_s": page.slow_s,
        "transient": list(page.transient or []) or None,
        "dup_of": page.dup_of,
        "near_of": page.near_of,
        "canonical": page.canonical,
        "base_href": page.base_href,
        "orphan": page.orphan,
        "links": len(page.links),
    }
