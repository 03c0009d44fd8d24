"""Locust: the crawler's control API (start crawls, poll status, per-host views, pause/resume).

    make loadtest SERVICE=crawler USERS=5 DURATION=30s

Each user starts small crawls of the simulated web (bounded by max_pages, so the load on websim
stays polite and finite) and then behaves like a dashboard: polls status and host views.
"""

from __future__ import annotations

import random

from locust import HttpUser, between, task


class OperatorUser(HttpUser):
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        self.crawls: list[str] = []
        self.start_crawl()

    @task(1)
    def start_crawl(self) -> None:
        hosts = random.sample(range(200), k=3)
        body = {
            "seeds": [f"http://h{h:04d}.sim.test/" for h in hosts],
            "scope": ["*.sim.test"],
            "max_pages": 30,
            "max_depth": 3,
        }
        with self.client.post("/v1/crawls", json=body, name="/v1/crawls [start]", catch_response=True) as r:
            if r.status_code == 201:
                self.crawls.append(r.json()["crawl_id"])
            else:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(6)
    def status(self) -> None:
        if self.crawls:
            self.client.get(f"/v1/crawls/{random.choice(self.crawls)}", name="/v1/crawls/{id}")

    @task(3)
    def hosts(self) -> None:
        if self.crawls:
            self.client.get(f"/v1/crawls/{random.choice(self.crawls)}/hosts", name="/v1/crawls/{id}/hosts")

    @task(2)
    def list_crawls(self) -> None:
        self.client.get("/v1/crawls")

    @task(1)
    def pause_and_resume(self) -> None:
        if not self.crawls:
            return
        crawl = random.choice(self.crawls)
        # A finished crawl answers 409: that is the API's contract, not a failure.
        for action in ("pause", "resume"):
            with self.client.post(
                f"/v1/crawls/{crawl}/{action}", name=f"/v1/crawls/{{id}}/{action}", catch_response=True
            ) as r:
                if r.status_code in (200, 409):
                    r.success()
