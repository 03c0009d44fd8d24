"""Host partitions owned by crawler workers through fenced leases (one Redis, or a Redis Cluster).

Hosts hash into P partitions (blake2b of the host name, so every process agrees). A worker owns a
partition through a lease key with a TTL; every change of owner increments the partition's epoch
(the fencing token). Every store write for a partition's URLs, politeness and robots carries the
epoch it was claimed under, and the store's Lua scripts refuse it unless the lease still names
this worker *and* the epoch is unchanged: a worker frozen past its lease writes nothing when it
wakes. Besides the store's check, a worker trusts its lease only until `valid_until` on its own
monotonic clock (which keeps running while the process is stopped), so it neither sends requests
nor writes after its lease could have run out.

Keys (hash tag per partition, so a partition's keys share one Cluster slot):
    pg:part:{p7}:lease   owner id, PX lease_ms
    pg:part:{p7}:epoch   INCR on every new owner
    pg:part:{p7}:w       HINCRBY "<owner>:<epoch>" per accepted write (audit; fencing proof)
    pg:workers           ZSET worker -> heartbeat expiry (ms); its own tag {workers}
    pg:partitions        the service's P (first writer wins; every worker reads it back)

Fair share: with N live workers (fresh heartbeats) each worker holds at most ceil(P/N). A worker
above its share drains the extra partitions (no new claims; releases once its turns there ended);
one below takes free partitions. A dead worker's leases expire and the others adopt them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("services.crawler.partitions")

DEFAULT_PARTITIONS = 16
MAX_PARTITIONS = 1024
WORKERS_KEY = "pg:{workers}:live"
PARTITIONS_KEY = "pg:{workers}:partitions"


class Fenced(Exception):
    """A write for a partition this worker no longer owns (stale epoch): refused, nothing written."""


def partition_of(host: str, partitions: int) -> int:
    digest = hashlib.blake2b(host.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def tag(p: int) -> str:
    return f"{{p{p}}}"


def lease_key(p: int) -> str:
    return f"pg:part:{tag(p)}:lease"


def epoch_key(p: int) -> str:
    return f"pg:part:{tag(p)}:epoch"


def writes_key(p: int) -> str:
    return f"pg:part:{tag(p)}:w"


# Shared Lua prelude: KEYS[1] lease, KEYS[2] epoch, KEYS[3] writes audit; ARGV[1] owner, ARGV[2] epoch.
FENCE_LUA = """
local function fenced()
  if redis.call('GET', KEYS[1]) ~= ARGV[1] then return true end
  if redis.call('GET', KEYS[2]) ~= ARGV[2] then return true end
  return false
end
local function audit()
  redis.call('HINCRBY', KEYS[3], ARGV[1] .. ':' .. ARGV[2], 1)
end
"""

# Free, or still leased to this very worker id (a restart of it: what it held died with it), so
# a restarted worker takes its partitions back at once; either way under a new epoch.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('INCR', KEYS[2])
"""

# KEYS lease, epoch; ARGV owner, epoch, ttl_ms: 1 renewed, 0 lost
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


@dataclass
class Ownership:
    epoch: int
    valid_until: float  # monotonic: trusted until then (lease TTL minus a margin, from before the call)
    draining: bool = False


class PartitionManager:
    """One per worker process; shared by every crawl the worker runs. `tick` may run on a thread
    of its own (the worker does so): it holds `lock` while it changes ownership, and the store
    reads ownership with single dict lookups."""

    def __init__(
        self,
        client: Any,
        worker_id: str,
        *,
        partitions: int = DEFAULT_PARTITIONS,
        lease_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}, got {partitions}")
        self.redis = client
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.clock = clock
        client.set(PARTITIONS_KEY, partitions, nx=True)
        self.partitions = int(client.get(PARTITIONS_KEY))
        self.owned: dict[int, Ownership] = {}
        # claimed, unfinished URLs per (partition, epoch), all crawls: a draining partition is
        # released only when its count is 0
        self.inflight: Counter[tuple[int, int]] = Counter()
        self.on_gain: list[Callable[[int, int], None]] = []  # (partition, epoch)
        self.on_lose: list[Callable[[int], None]] = []
        # (partition, epoch): trusted again after a late renewal found the lease still ours
        self.on_resume: list[Callable[[int, int], None]] = []
        self.resumed = 0  # renewals that found the lease ours after local trust had run out
        self.fenced_refusals = 0
        self.adopted = 0
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        from redis.cluster import RedisCluster

        self._cluster = isinstance(client, RedisCluster)  # one slot per call: no pipelined renewals
        if not self._cluster:
            client.script_load(_RENEW)  # renewals are pipelined by its SHA (_renew_all)
        self._left = False
        self.lock = threading.RLock()

    # -- questions the store asks ------------------------------------------------------------
    def partition(self, host: str) -> int:
        return partition_of(host, self.partitions)

    def claim_epoch(self, p: int) -> int | None:
        """Epoch to claim new URLs under, or None (not owned, lease not trusted, or draining)."""
        own = self.owned.get(p)
        if own is None or own.draining or self.clock() >= own.valid_until:
            return None
        return own.epoch

    def write_epoch(self, p: int) -> int:
        """Epoch to write under (finish, retry, politeness); raises Fenced when not trusted."""
        own = self.owned.get(p)
        if own is None or self.clock() >= own.valid_until:
            self.fenced_refusals += 1
            raise Fenced(f"partition {p}: lease not held")
        return own.epoch

    def done(self, p: int, epoch: int) -> None:
        """One claimed URL of (p, epoch) reached an end (finished, retried, released)."""
        key = (p, epoch)
        with self.lock:
            if key in self.inflight:
                self.inflight[key] -= 1

    def fence_keys(self, p: int) -> list[str]:
        return [lease_key(p), epoch_key(p), writes_key(p)]

    def refused(self, p: int, epoch: int) -> Fenced:
        """The store refused a write: forget the partition (if still under that epoch)."""
        self.fenced_refusals += 1
        own = self.owned.get(p)
        if own is not None and own.epoch == epoch:
            self._lose(p)
        return Fenced(f"partition {p}: epoch {epoch} is stale")

    # -- membership and rebalancing ----------------------------------------------------------
    def fair_share(self, n_workers: int) -> int:
        return math.ceil(self.partitions / max(1, n_workers))

    def tick(self) -> tuple[list[int], list[int]]:
        """Heartbeat, renew, rebalance. Call every lease_seconds/3. Returns (gained, lost)."""
        with self.lock:
            return self._tick()

    def _tick(self) -> tuple[list[int], list[int]]:
        if self._left:
            return [], []
        ttl_ms = int(self.lease_seconds * 1000)
        t0 = self.clock()
        now_ms = int(time.time() * 1000)
        pipe = self.redis.pipeline(transaction=False)  # one slot ({workers}): one round trip
        pipe.zadd(WORKERS_KEY, {self.worker_id: now_ms + ttl_ms})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now_ms)
        pipe.zrange(WORKERS_KEY, 0, -1)
        workers = [w.decode() if isinstance(w, bytes) else w for w in pipe.execute()[-1]]
        share = self.fair_share(len(workers))
        lost: list[int] = []
        # Every owned partition, trusted locally or not: a renewal late past `valid_until` (a
        # starved process) that still finds the lease under our id and epoch proves nobody took
        # it over meanwhile (a new owner would have changed both), so the same epoch goes on.
        # Losing and re-acquiring it instead would bump the epoch and hand back our own URLs in
        # flight, whose finishes the store then refuses: pages fetched twice.
        held = list(self.owned.items())
        renewed = self._renew_all(held, ttl_ms)
        resumed: list[tuple[int, int]] = []
        for p, own in list(self.owned.items()):
            if not renewed.get(p, False):
                self._lose(p)
                lost.append(p)
            else:
                if t0 >= own.valid_until:
                    resumed.append((p, own.epoch))
                own.valid_until = t0 + self.lease_seconds * 0.8
        active = [p for p, o in self.owned.items() if not o.draining]
        for p in sorted(active, reverse=True)[: max(0, len(active) - share)]:
            self.owned[p].draining = True  # above the fair share: stop claiming, release when idle
        for p, own in list(self.owned.items()):
            if own.draining and self.inflight[(p, own.epoch)] <= 0:
                self._release(keys=[lease_key(p), epoch_key(p)], args=[self.worker_id, own.epoch])
                self._lose(p)
                lost.append(p)
        gained: list[int] = []
        want = share - sum(1 for o in self.owned.values() if not o.draining)
        if want > 0:
            rank = workers.index(self.worker_id) if self.worker_id in workers else 0
            start = (rank * self.partitions) // max(1, len(workers))
            order = [(start + i) % self.partitions for i in range(self.partitions)]
            for p in self._takeable([p for p in order if p not in self.owned]):
                if want <= 0:
                    break
                epoch = int(self._acquire(keys=[lease_key(p), epoch_key(p)], args=[self.worker_id, ttl_ms]))
                if epoch:
                    self.owned[p] = Ownership(epoch, t0 + self.lease_seconds * 0.8)
                    gained.append(p)
                    want -= 1
        for p in gained:
            self.adopted += 1
            log.info("worker %s owns partition %d (epoch %d)", self.worker_id, p, self.owned[p].epoch)
            for cb in self.on_gain:
                cb(p, self.owned[p].epoch)
        for p, epoch in resumed:
            if p in self.owned:  # its hosts' turns in the gap ended Fenced: they compete again
                self.resumed += 1
                log.info("worker %s trusts partition %d again (epoch %d)", self.worker_id, p, epoch)
                for resume in self.on_resume:
                    resume(p, epoch)
        return gained, lost

    def _takeable(self, candidates: list[int]) -> list[int]:
        """The candidates whose lease is free or our own, in order: one pipeline of GETs (on a
        Cluster one round trip per node), so a worker below its share does not try every held
        partition in a round trip of its own on every tick (a tick must stay well inside the
        lease: it renews it)."""
        if not candidates:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for p in candidates:
            pipe.get(lease_key(p))
        owners = pipe.execute()
        mine = (self.worker_id, self.worker_id.encode())
        return [p for p, o in zip(candidates, owners, strict=True) if o is None or o in mine]

    def _renew_all(self, held: list[tuple[int, Ownership]], ttl_ms: int) -> dict[int, bool]:
        """Renew these leases: partition -> renewed. On one Redis in one round trip (a pipeline;
        each renewal is its own fenced script), on a Cluster one by one (one slot per call)."""
        if self._cluster or len(held) <= 1:
            return {
                p: bool(
                    self._renew(keys=[lease_key(p), epoch_key(p)], args=[self.worker_id, own.epoch, ttl_ms])
                )
                for p, own in held
            }
        import redis

        for attempt in (0, 1):
            pipe = self.redis.pipeline(transaction=False)
            for p, own in held:
                pipe.evalsha(
                    self._renew.sha, 2, lease_key(p), epoch_key(p), self.worker_id, own.epoch, ttl_ms
                )
            try:
                return {p: bool(r) for (p, _), r in zip(held, pipe.execute(), strict=True)}
            except redis.exceptions.NoScriptError:  # a restarted Redis (renewing twice is harmless)
                if attempt:
                    raise
                self.redis.script_load(_RENEW)
        raise AssertionError("unreachable")

    def _lose(self, p: int) -> None:
        own = self.owned.pop(p, None)
        if own is not None:
            self.inflight.pop((p, own.epoch), None)
            log.info("worker %s lost partition %d", self.worker_id, p)
            for cb in self.on_lose:
                cb(p)

    def leave(self) -> None:
        """Release every partition and the heartbeat (a clean stop: others adopt at once)."""
        with self.lock:
            self._leave()

    def _leave(self) -> None:
        self._left = True
        for p, own in list(self.owned.items()):
            self._release(keys=[lease_key(p), epoch_key(p)], args=[self.worker_id, own.epoch])
            self._lose(p)
        self.redis.zrem(WORKERS_KEY, self.worker_id)

    def view(self) -> dict[str, Any]:
        return cluster_view(self.redis)


def cluster_view(client: Any) -> dict[str, Any]:
    """Every live worker and every partition's owner and epoch (for the control API)."""
    raw = client.get(PARTITIONS_KEY)
    partitions = int(raw) if raw is not None else 0
    now_ms = int(time.time() * 1000)
    workers = []
    for w, until in client.zrange(WORKERS_KEY, 0, -1, withscores=True):
        name = w.decode() if isinstance(w, bytes) else w
        workers.append({"worker": name, "alive": until > now_ms, "lease_ms_left": int(until - now_ms)})
    parts = []
    for p in range(partitions):
        owner = client.get(lease_key(p))
        epoch = client.get(epoch_key(p))
        parts.append(
            {
                "partition": p,
                "owner": owner.decode() if isinstance(owner, bytes) else owner,
                "epoch": int(epoch) if epoch is not None else 0,
            }
        )
    return {"partitions": partitions, "workers": workers, "partition_owners": parts}
