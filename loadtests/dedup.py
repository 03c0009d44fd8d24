"""Locust: the dedup worker (page events in, cluster queries out, stats, scan jobs).

    make loadtest SERVICE=dedup USERS=10 DURATION=30s

Ingest users post batches of generated page events with planted exact and near duplicates;
query users ask for the clusters of URLs they posted; a rare user starts a scan job of the
first allow-listed root (PG_LOADTEST_SCAN_ROOT, default: none, then scans are skipped).
"""

from __future__ import annotations

import hashlib
import os
import random
import time

from locust import HttpUser, between, task

WORDS = [
    "crawler",
    "politeness",
    "robots",
    "frontier",
    "lease",
    "retry",
    "backoff",
    "jitter",
    "cache",
    "index",
    "shard",
    "token",
    "batch",
]
SCAN_ROOT = os.environ.get("PG_LOADTEST_SCAN_ROOT")


def page(url: str, text: str) -> dict:
    return {
        "crawl_id": "locust",
        "url": url,
        "final_url": url,
        "status": 200,
        "content_type": "text/html",
        "content_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "text": text,
        "links": [],
        "canonical": None,
        "fetched_at": time.time(),
        "warc_file": None,
    }


class IngestUser(HttpUser):
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.urls: list[str] = []

    @task(3)
    def post_pages(self) -> None:
        base = " ".join(random.choices(WORDS, k=200))
        events = []
        for _ in range(10):
            url = f"http://h{random.randrange(200):04d}.sim.test/p/{random.randrange(10**9)}"
            kind = random.random()
            words = base.split()
            if kind < 0.3:  # near duplicate: a few words changed
                for i in random.sample(range(len(words)), k=5):
                    words[i] = random.choice(WORDS)
            elif kind > 0.6:  # unrelated page
                words = random.choices(WORDS, k=200)
            events.append(page(url, " ".join(words)))
            self.urls.append(url)
        self.client.post("/v1/pages", json={"events": events}, name="/v1/pages [batch of 10]")

    @task(5)
    def cluster(self) -> None:
        if self.urls:
            self.client.get("/v1/clusters", params={"url": random.choice(self.urls)}, name="/v1/clusters")

    @task(1)
    def stats(self) -> None:
        self.client.get("/v1/stats")

    @task(1)
    def scan(self) -> None:
        if SCAN_ROOT:
            # Scan jobs take an API key (the worker's dev key unless PG_LOADTEST_DEDUP_KEY is set).
            auth = {"Authorization": f"Bearer {os.environ.get('PG_LOADTEST_DEDUP_KEY', 'dev-dedup-key')}"}
            r = self.client.post("/v1/scans", json={"paths": [SCAN_ROOT]}, name="/v1/scans", headers=auth)
            if r.status_code == 202:
                self.client.get(f"/v1/scans/{r.json()['id']}", name="/v1/scans/{id}", headers=auth)
