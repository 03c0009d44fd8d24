"""The server's own numbers: /metrics snapshots (deltas, histogram quantiles) and Prometheus ranges.

A `Snapshot` is every sample of one /metrics page at one moment. Subtracting two gives what the
server counted in between, which is what an experiment holds its client's counts against. A
`Sampler` takes snapshots of several services once a second in a thread, for time series over a
run. `prometheus_range` reads the same series from Prometheus (query_range) when it answers.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]


@dataclass
class Snapshot:
    """Samples of one /metrics page: {(sample name, sorted labels): value}."""

    samples: dict[Key, float]
    at: float = field(default_factory=time.time)

    @classmethod
    def parse(cls, text: str, at: float | None = None) -> Snapshot:
        samples: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return cls(samples, time.time() if at is None else at)

    @classmethod
    def take(cls, base_url: str, timeout: float = 10.0) -> Snapshot:
        at = time.time()
        resp = httpx.get(f"{base_url}/metrics", timeout=timeout)
        resp.raise_for_status()
        return cls.parse(resp.text, at)

    def _match(self, name: str, labels: dict[str, str]) -> Iterable[tuple[Labels, float]]:
        for (n, lab), v in self.samples.items():
            if n == name and all(dict(lab).get(k) == str(want) for k, want in labels.items()):
                yield lab, v

    def value(self, name: str, **labels: str) -> float:
        """Sum over every series of `name` whose labels include `labels` (0 when none)."""
        return sum(v for _, v in self._match(name, labels))

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for lab, v in self._match(name, labels):
            key = dict(lab).get(label, "")
            out[key] = out.get(key, 0.0) + v
        return out

    def __sub__(self, earlier: Snapshot) -> Snapshot:
        """What was counted between `earlier` and this snapshot (gauges subtract too: ignore them)."""
        keys = set(self.samples) | set(earlier.samples)
        return Snapshot(
            {k: self.samples.get(k, 0.0) - earlier.samples.get(k, 0.0) for k in keys}, self.at - earlier.at
        )

    def quantile(self, histogram: str, q: float, **labels: str) -> float | None:
        """histogram_quantile() as Prometheus computes it (linear within the bucket), or None."""
        buckets: dict[float, float] = {}
        for lab, v in self._match(f"{histogram}_bucket", labels):
            le = float(dict(lab)["le"])
            buckets[le] = buckets.get(le, 0.0) + v
        return bucket_quantile(sorted(buckets.items()), q)


def bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Quantile q of cumulative (upper bound, count) buckets; the +Inf bucket holds the total."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return lower  # Prometheus answers the highest finite bound
            if count == below:
                return le
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return lower


class Sampler:
    """Snapshots of some services' /metrics every `interval` seconds, in a daemon thread."""

    def __init__(self, urls: dict[str, str], interval: float = 1.0) -> None:
        self.urls = urls
        self.interval = interval
        self.snapshots: dict[str, list[Snapshot]] = {name: [] for name in urls}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                for name, url in self.urls.items():
                    try:
                        at = time.time()
                        resp = client.get(f"{url}/metrics")
                        self.snapshots[name].append(Snapshot.parse(resp.text, at))
                    except (httpx.HTTPError, ValueError):
                        pass  # a missed sample is a gap in a plot, not a failed experiment
                self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def rate(self, service: str, name: str, **labels: str) -> list[tuple[float, float]]:
        """(unix time, per-second increase) of a counter between consecutive samples."""
        snaps = self.snapshots[service]
        out = []
        for a, b in itertools.pairwise(snaps):
            if b.at > a.at:
                out.append((b.at, (b.value(name, **labels) - a.value(name, **labels)) / (b.at - a.at)))
        return out

    def gauge(self, service: str, name: str, **labels: str) -> list[tuple[float, float]]:
        return [(s.at, s.value(name, **labels)) for s in self.snapshots[service]]


def prometheus_range(
    prom_url: str, queries: dict[str, str], start: float, end: float, step: float = 5.0
) -> dict[str, list[tuple[float, float]]] | None:
    """Each query's series (summed over its result vectors) from Prometheus, or None if it is down."""
    out: dict[str, list[tuple[float, float]]] = {}
    try:
        with httpx.Client(base_url=prom_url, timeout=10.0) as client:
            for label, query in queries.items():
                resp = client.get(
                    "/api/v1/query_range", params={"query": query, "start": start, "end": end, "step": step}
                )
                resp.raise_for_status()
                points: dict[float, float] = {}
                for series in resp.json()["data"]["result"]:
                    for t, v in series["values"]:
                        if v not in ("NaN", "+Inf", "-Inf"):
                            points[float(t)] = points.get(float(t), 0.0) + float(v)
                out[label] = sorted(points.items())
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return out
