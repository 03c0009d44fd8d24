"""Redis implementation of FrontierStore: one crawl run by several workers over host partitions.

Every multi-key move is one Lua script over one partition's keys, and every key of a partition
carries its hash tag (`{p7}`), so the same code runs on one Redis or on a Redis Cluster. Writes
for a partition's URLs (claim, start, finish, retry, release, lease expiry), its hosts' politeness
records and robots policies are fenced (partitions.py): refused unless the caller still holds the
partition's lease under the epoch the URL was claimed with. `add` is not fenced: any worker may
add links to any partition (the seen-set makes it idempotent), and the owner learns about new
hosts from the partition's inbox set.

Round trips (each one a wait on the worker's event loop): the politeness gate and the URL's start
are one script (gate_start); a finish adds the page's links of its own partition in its own script,
and on one Redis the adds for other partitions go in the same pipeline (one round trip a page;
on a Cluster one per slot); an empty claim answers the next_ready_at after it; the page budget is
not read before every turn (pages_reserved); lease expiry, inbox polls and lease renewals take
one pipeline for all partitions (tests/services/crawler/test_store_redis_round_trips.py).

Keys of crawl C, partition p (KP = "pg:c:C:{pN}:"):
    KP seq         INCR: URL ids are seq * 1024 + p (the id names its partition)
    KP seen        HASH url_key (16 raw bytes) -> id: the exact URL set
    KP u:<id>      HASH the URL record (u h d r v s a nb lo lu st sha err fa sq da)
    KP q:<host>    ZSET ready ids by depth * 2^40 + seq (lowest depth, oldest first)
    KP w:<host>    ZSET RETRYABLE ids waiting for their not_before
    KP ready       ZSET host -> earliest not_before of its ready/waiting URLs (0: now)
    KP leases      ZSET claimed id -> lease_until
    KP n, hn:<h>   HASH state -> count (whole partition, one host): completion without scans
    KP adm         HASH host -> URLs admitted (max_pages_per_host)
    KP hosts       SET hosts seen;  KP inbox  SET hosts with new URLs, drained by the owner
    KP e:<id>      edges found on a fetched page, for depth lowering (only with max_depth)
    KP bfc, bf     optional Bloom filter in front of KP seen: HASH m (bits), k (hashes); the
                   bitfield itself (SETBIT/GETBIT); KP bfs HASH added, skips (certainly new: no
                   HGET), false_positives ("maybe seen" but absent): see configure_bloom
Per host, shared by every crawl (politeness belongs to the host, not the crawl):
    pg:host:{pN}:<host>    HASH next (wall s), crawl_delay, backoff, retry_until
    pg:robots:{pN}:<host>  HASH status, body, error, fetched_at (PX = the policy's TTL)
Crawl-wide (their own tag): pg:crawl:{C}:budget (pages reserved), pg:crawl:{C}:meta,
and pg:c:C:sha:<sha256> (content hash -> first id; untagged so they spread over slots).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from services.crawler.partitions import (
    DEFAULT_PARTITIONS,
    FENCE_LUA,
    PARTITIONS_KEY,
    Fenced,
    PartitionManager,
    partition_of,
    tag,
)
from services.crawler.store import Finish, FrontierStore, NewURL, URLRecord, URLState, url_key

ID_STRIDE = 1024  # id = seq * ID_STRIDE + partition
CRAWLS_KEY = "pg:crawls"
_MAX_CASCADE = 100_000  # depth-lowering steps per call (bounded)
_TRUST_POLL_S = 0.05  # a write waiting for a late lease renewal looks again this often

_HELPERS = """
local KP
local function setcount(host, from, to)
  if from then
    redis.call('HINCRBY', KP .. 'n', from, -1)
    redis.call('HINCRBY', KP .. 'hn:' .. host, from, -1)
  end
  if to then
    redis.call('HINCRBY', KP .. 'n', to, 1)
    redis.call('HINCRBY', KP .. 'hn:' .. host, to, 1)
  end
end
local function score(depth, sq) return tonumber(depth) * 1099511627776 + tonumber(sq) end
local function refresh(host)
  if redis.call('ZCARD', KP .. 'q:' .. host) > 0 then
    redis.call('ZADD', KP .. 'ready', 0, host)
    return
  end
  local w = redis.call('ZRANGE', KP .. 'w:' .. host, 0, 0, 'WITHSCORES')
  if #w > 0 then redis.call('ZADD', KP .. 'ready', w[2], host)
  else redis.call('ZREM', KP .. 'ready', host) end
end
local function make_ready(id, rk, host, now)
  local f = redis.call('HMGET', rk, 'nb', 'd', 'sq')
  if tonumber(f[1] or 0) > now then redis.call('ZADD', KP .. 'w:' .. host, f[1], id)
  else redis.call('ZADD', KP .. 'q:' .. host, score(f[2], f[3]), id) end
  redis.call('SADD', KP .. 'inbox', host)
  refresh(host)
end
-- a leased URL back to a ready state (release, lease expiry)
local function unlease(id, now)
  local rk = KP .. 'u:' .. id
  local f = redis.call('HMGET', rk, 's', 'a', 'h')
  local s = tonumber(f[1])
  redis.call('ZREM', KP .. 'leases', id)
  if s ~= 1 and s ~= 2 then return 0 end
  local to = 0
  if tonumber(f[2]) > 0 then to = 5 end
  redis.call('HSET', rk, 's', to)
  redis.call('HDEL', rk, 'lo', 'lu')
  setcount(f[3], s, to)
  make_ready(id, rk, f[3], now)
  return 1
end
"""


def _fenced_script(body: str, helpers: str = "") -> str:
    """A script refused (-1) unless the caller holds the partition under its epoch (partitions.py):
    KEYS lease, epoch, writes, then the script's key; ARGV owner, epoch, then the script's own."""
    return FENCE_LUA + helpers + "if fenced() then return -1 end\n" + body


def _partition_script(body: str, extra: str = "") -> str:
    """A fenced script over one partition's keys (called through `RedisStore._on_partition`):
    KEYS[4] KP..'n'; ARGV[3] KP (set for _HELPERS), the script's own from ARGV[4]."""
    return _fenced_script("KP = ARGV[3]\n" + body, _HELPERS + extra)


def _url_script(body: str, extra: str = "") -> str:
    """A fenced partition script about one URL: ARGV[4] its id; `id` and its record key `rk` set."""
    return _partition_script("local id = ARGV[4]\nlocal rk = KP .. 'u:' .. id\n" + body, extra)


# add_urls(A, first, p, now, maxph, maxd, out): the 6-tuples (key, url, host, depth, redirects,
# via) of A from index `first`, all of partition p (KP set). Counts the new URLs in out[1] and
# appends (depth, edges JSON) of FETCHED URLs whose depth was lowered and whose links were kept
# (their descendants' depths are re-derived by the caller).
_ADD_FN = """
local function add_urls(A, first, p, now, maxph, maxd, out)
-- The Bloom filter (configure_bloom), kept here so every writer keeps it: positions by double
-- hashing over the key's first 8 bytes (two 32-bit halves; exact in Lua's doubles).
local bfc = redis.call('HMGET', KP .. 'bfc', 'm', 'k')
local bfm, bfk = tonumber(bfc[1]), tonumber(bfc[2])
local function bf_positions(key)
  local b1, b2, b3, b4, b5, b6, b7, b8 = string.byte(key, 1, 8)
  local h1 = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  local h2 = ((b5 * 256 + b6) * 256 + b7) * 256 + b8
  h2 = h2 - h2 % 2 + 1
  local pos = {}
  for j = 0, bfk - 1 do pos[#pos + 1] = (h1 + j * h2) % bfm end
  return pos
end
for i = first, #A, 6 do
  local key, url, host = A[i], A[i + 1], A[i + 2]
  local depth = tonumber(A[i + 3])
  local pos, maybe = nil, true
  if bfm then
    pos = bf_positions(key)
    for _, b in ipairs(pos) do
      if redis.call('GETBIT', KP .. 'bf', b) == 0 then maybe = false break end
    end
  end
  local id = false
  if maybe then id = redis.call('HGET', KP .. 'seen', key) end
  if bfm then
    if not maybe then redis.call('HINCRBY', KP .. 'bfs', 'skips', 1)
    elseif not id then redis.call('HINCRBY', KP .. 'bfs', 'false_positives', 1) end
  end
  if id then
    local rk = KP .. 'u:' .. id
    local f = redis.call('HMGET', rk, 'd', 's', 'sq')
    if depth < tonumber(f[1]) then
      redis.call('HSET', rk, 'd', depth)
      local s = tonumber(f[2])
      if s == 0 or s == 5 then
        redis.call('ZADD', KP .. 'q:' .. host, 'XX', score(depth, f[3]), id)
      elseif s == 3 then
        local edges = redis.call('GET', KP .. 'e:' .. id)
        if edges then
          table.insert(out, depth)
          table.insert(out, edges)
        end
      end
    end
  elseif (not maxd or depth <= maxd)
      and (not maxph or tonumber(redis.call('HGET', KP .. 'adm', host) or 0) < maxph) then
    local sq = redis.call('INCR', KP .. 'seq')
    id = sq * 1024 + p
    local rk = KP .. 'u:' .. id
    redis.call('HSET', KP .. 'seen', key, id)
    if bfm then
      for _, b in ipairs(pos) do redis.call('SETBIT', KP .. 'bf', b, 1) end
      redis.call('HINCRBY', KP .. 'bfs', 'added', 1)
    end
    redis.call('HSET', rk, 'u', url, 'h', host, 'd', depth, 'r', A[i + 4], 'v', A[i + 5],
               's', 0, 'a', 0, 'nb', 0, 'sq', sq, 'da', now)
    redis.call('ZADD', KP .. 'q:' .. host, score(depth, sq), id)
    redis.call('HINCRBY', KP .. 'adm', host, 1)
    redis.call('SADD', KP .. 'hosts', host)
    redis.call('SADD', KP .. 'inbox', host)
    redis.call('ZADD', KP .. 'ready', 0, host)
    setcount(host, nil, 0)
    out[1] = out[1] + 1
  end
end
end
"""

# KEYS[1] KP..'n' (routes the call); ARGV: KP, now, max_per_host, max_depth, p, then 6-tuples
# (key, url, host, depth, redirects, via). Returns {new, depth1, edges1, ...} (add_urls).
_ADD = (
    _HELPERS
    + _ADD_FN
    + """
KP = ARGV[1]
local out = {0}
add_urls(ARGV, 6, tonumber(ARGV[5]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), out)
return out
"""
)

# Fenced scripts: KEYS lease, epoch, writes, KP..'n'; ARGV owner, epoch, KP, ...
_CLAIM = _partition_script(
    """
local host, now, until_ = ARGV[4], tonumber(ARGV[5]), ARGV[6]  -- ARGV[7] the URL lease owner
local w = KP .. 'w:' .. host
for _, id in ipairs(redis.call('ZRANGEBYSCORE', w, '-inf', now)) do
  redis.call('ZREM', w, id)
  local f = redis.call('HMGET', KP .. 'u:' .. id, 'd', 'sq')
  redis.call('ZADD', KP .. 'q:' .. host, score(f[1], f[2]), id)
end
local top = redis.call('ZRANGE', KP .. 'q:' .. host, 0, 0)
if #top == 0 then
  refresh(host)
  return {0, redis.call('ZSCORE', KP .. 'ready', host) or ''}  -- nothing ready: when it will be
end
local id = top[1]
local rk = KP .. 'u:' .. id
redis.call('ZREM', KP .. 'q:' .. host, id)
local s = tonumber(redis.call('HGET', rk, 's'))
redis.call('HSET', rk, 's', 1, 'lo', ARGV[7], 'lu', until_)
redis.call('ZADD', KP .. 'leases', until_, id)
setcount(host, s, 1)
refresh(host)
audit()
local f = redis.call('HMGET', rk, 'u', 'h', 'd', 'r', 'v', 'a')
return {id, f[1], f[2], f[3], f[4], f[5], f[6]}
"""
)

_START = _url_script(
    """
local until_ = ARGV[5]
local f = redis.call('HMGET', rk, 's', 'lo', 'h')
if tonumber(f[1]) ~= 1 or f[2] ~= ARGV[6] then return 0 end
redis.call('HSET', rk, 's', 2, 'lu', until_)
redis.call('HINCRBY', rk, 'a', 1)
redis.call('ZADD', KP .. 'leases', until_, id)
setcount(f[3], 1, 2)
audit()
return 1
"""
)

# ARGV ..., id, state, status, sha, err, fetched_at, edges JSON ('' = none), now, max_per_host,
# max_depth, p, then the page's links of this same partition as _ADD's 6-tuples (added in the same
# step: one round trip for the outcome and the links that stay in the partition).
# Returns 0 (already final: nothing written, no link added) or {1 + the URL's depth now, new,
# lowered depth, edges, ...} (a shorter path may have lowered the URL's depth while it was being
# fetched: the caller then re-adds its links at the lower depth; lowered: as _ADD's).
_FINISH = _url_script(
    """
local f = redis.call('HMGET', rk, 's', 'h')
if not f[1] then return 0 end
local s = tonumber(f[1])
if s == 3 or s == 4 then return 0 end
local host = f[2]
local out = {0}
add_urls(ARGV, 15, tonumber(ARGV[14]), tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), out)
redis.call('HSET', rk, 's', ARGV[5], 'st', ARGV[6], 'sha', ARGV[7], 'err', ARGV[8], 'fa', ARGV[9])
redis.call('HDEL', rk, 'lo', 'lu')
redis.call('ZREM', KP .. 'leases', id)
redis.call('ZREM', KP .. 'q:' .. host, id)
redis.call('ZREM', KP .. 'w:' .. host, id)
if ARGV[10] ~= '' then redis.call('SET', KP .. 'e:' .. id, ARGV[10]) end
setcount(host, s, tonumber(ARGV[5]))
refresh(host)
audit()
local res = {1 + tonumber(redis.call('HGET', rk, 'd'))}
for i = 1, #out do res[#res + 1] = out[i] end
return res
""",
    _ADD_FN,
)

# ARGV ..., id, not_before, error, status, now
_RETRY = _url_script(
    """
local f = redis.call('HMGET', rk, 's', 'h')
local s = tonumber(f[1])
if s ~= 1 and s ~= 2 then return 0 end
redis.call('HSET', rk, 's', 5, 'nb', ARGV[5], 'err', ARGV[6], 'st', ARGV[7])
redis.call('HDEL', rk, 'lo', 'lu')
redis.call('ZREM', KP .. 'leases', id)
setcount(f[2], s, 5)
make_ready(id, rk, f[2], tonumber(ARGV[8]))
audit()
return 1
"""
)

# ARGV ..., now, then ids to hand back ('*' = every lease that ran out by now, '**' = every lease)
_UNLEASE = _partition_script(
    """
local now = tonumber(ARGV[4])
local ids
if ARGV[5] == '*' then ids = redis.call('ZRANGEBYSCORE', KP .. 'leases', '-inf', '(' .. ARGV[4])
elseif ARGV[5] == '**' then ids = redis.call('ZRANGE', KP .. 'leases', 0, -1)
else ids = {unpack(ARGV, 5)} end
local n = 0
for _, id in ipairs(ids) do n = n + unlease(id, now) end
if n > 0 then audit() end
return n
"""
)

# KEYS inbox, ready (one partition); ARGV count -> {host, ready time, ...}: hosts given work
# since the last call, each with its earliest not_before (hosts with nothing ready left out)
_INBOX = """
local out = {}
for _, h in ipairs(redis.call('SPOP', KEYS[1], ARGV[1])) do
  local t = redis.call('ZSCORE', KEYS[2], h)
  if t then out[#out + 1] = h; out[#out + 1] = t end
end
return out
"""

# KEYS lease, epoch, writes, record; ARGV owner, epoch, ttl_ms ('' = none), field/value pairs
_HSET_FENCED = _fenced_script(
    """
redis.call('HSET', KEYS[4], unpack(ARGV, 4))
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[4], ARGV[3]) end
audit()
return 1
"""
)

# The per-host politeness record, in Redis server time (TIME), so workers on machines whose clocks
# disagree still keep every gap: the one fragment both scripts that gate a host are built from
# (_HOST, _GATE_START; each stays one script, one atomic step). KEYS[4] the host record.
_HOST_RECORD = """
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
-- seconds before the host may be asked (the stored next-eligible and Retry-After times)
local function host_wait(now)
  local f = redis.call('HMGET', KEYS[4], 'next', 'retry_until')
  return math.max(tonumber(f[1]) or 0, tonumber(f[2]) or 0) - now
end
-- write the record from ARGV[i]: next_in, retry_in (seconds from now, '' = none), then the
-- other field/value pairs
local function host_write(now, i)
  local kv = {}
  if ARGV[i] ~= '' then kv[#kv + 1] = 'next'; kv[#kv + 1] = tostring(now + tonumber(ARGV[i])) end
  kv[#kv + 1] = 'retry_until'
  if ARGV[i + 1] ~= '' then kv[#kv + 1] = tostring(now + tonumber(ARGV[i + 1])) else kv[#kv + 1] = '' end
  for j = i + 2, #ARGV do kv[#kv + 1] = ARGV[j] end
  redis.call('HSET', KEYS[4], unpack(kv))
end
"""

# KEYS lease, epoch, writes, host record; ARGV owner, epoch, mode, next_in, retry_in, then other
# field/value pairs. mode 'gate': go (0) only when host_wait has run out, else the seconds left;
# the new record is written in the same step, so two requests never pass one gap.
# mode 'save': write the record (the end of a request).
_HOST = _fenced_script(
    """
local now = server_now()
if ARGV[3] == 'gate' then
  local wait = host_wait(now)
  if wait > 0 then return tostring(wait) end
end
host_write(now, 4)
audit()
return 0
""",
    _HOST_RECORD,
)

# The gate (_HOST's 'gate' mode) and the claimed URL's start (_START) in one step, both in
# partition N's slot. KEYS lease, epoch, writes, host record; ARGV owner, epoch, KP, id, lease
# until, URL lease owner, next_in, retry_in, then other field/value pairs of the record.
# Returns the seconds left (a string) when the host is not eligible yet, 0 when the URL can no
# longer be started (nothing written: its lease was lost), 1 when the gate passed (the record
# written) and the URL is FETCHING.
_GATE_START = _fenced_script(
    """
KP = ARGV[3]
local now = server_now()
local wait = host_wait(now)
if wait > 0 then return tostring(wait) end
local id, until_ = ARGV[4], ARGV[5]
local rk = KP .. 'u:' .. id
local u = redis.call('HMGET', rk, 's', 'lo', 'h')
if tonumber(u[1]) ~= 1 or u[2] ~= ARGV[6] then return 0 end
redis.call('HSET', rk, 's', 2, 'lu', until_)
redis.call('HINCRBY', rk, 'a', 1)
redis.call('ZADD', KP .. 'leases', until_, id)
setcount(u[3], 1, 2)
host_write(now, 7)
audit()
return 1
""",
    _HELPERS + _HOST_RECORD,
)

# KEYS host record -> {server seconds, microseconds, field, value, ...} (one slot: runs on a cluster)
_HOST_READ = """
local t = redis.call('TIME')
local out = {t[1], t[2]}
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
"""

# KEYS budget; ARGV limit -> {1 reserved | 0 spent, the counter now}
_RESERVE = """
local n = tonumber(redis.call('GET', KEYS[1]) or 0)
if n >= tonumber(ARGV[1]) then return {0, n} end
return {1, redis.call('INCR', KEYS[1])}
"""


# KEYS[1] KP..'bfc'; ARGV KP, m, k: set the filter's shape once, and only before any URL (a
# URL added without it would be a false negative). 1: set or kept; -1: the partition has URLs.
_BLOOM_CONFIGURE = """
local KP = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('HLEN', KP .. 'seen') > 0 then return -1 end
redis.call('HSET', KEYS[1], 'm', ARGV[2], 'k', ARGV[3])
return 1
"""
_MAX_BLOOM_BITS = 2**32  # a Redis string holds at most 512 MiB


def configure_bloom(client: Any, crawl_id: str, capacity: int, error_rate: float = 0.01) -> int:
    """Put a Bloom filter in front of crawl `crawl_id`'s exact seen-set, sized for `capacity`
    URLs over all partitions at `error_rate` (each partition: capacity / P). It only saves exact
    lookups, never changes an answer. Call it before the crawl's first URL (register_crawl does);
    again on a resumed crawl it keeps the filter. Returns the partitions configured; ValueError
    when a partition already has URLs without a filter."""
    from services.crawler.bloom import BloomFilter

    P = partition_count(client)
    shape = BloomFilter(max(1, -(-capacity // P)), error_rate)  # only its sizing is used
    bits = min(shape.bits, _MAX_BLOOM_BITS)
    script = client.register_script(_BLOOM_CONFIGURE)
    for p in range(P):
        kp = f"pg:c:{crawl_id}:{tag(p)}:"
        if int(script(keys=[kp + "bfc"], args=[kp, bits, shape.hashes])) < 0:
            raise ValueError(f"crawl {crawl_id} already has URLs without a Bloom filter (partition {p})")
    return P


def connect(url: str, *, timeout: float = 10.0) -> Any:
    """A Redis client for `url`: redis://host:port/db, or redis-cluster://host:port for a Redis
    Cluster (any node; the client learns the rest). Every key the crawler uses carries a hash tag,
    so each Lua script touches one slot and runs unchanged on a cluster."""
    import redis

    if url.startswith("redis-cluster://"):
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(
            "redis://" + url.removeprefix("redis-cluster://"),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)


def _is_cluster(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def _final_answer(status: int | None) -> bool:
    """An answer that ends a URL for the server too (websim's judge: 2xx-4xx but 408/425/429)."""
    return status is not None and 200 <= status < 500 and status not in (408, 425, 429)


def _s(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def crawl_key(crawl_id: str, name: str) -> str:
    return f"pg:crawl:{{{crawl_id}}}:{name}"


def partition_count(client: Any) -> int:
    client.set(PARTITIONS_KEY, DEFAULT_PARTITIONS, nx=True)
    return int(client.get(PARTITIONS_KEY))


class RedisStore(FrontierStore):
    """One crawl's frontier in Redis, as seen by one worker (its `PartitionManager`).

    Without a manager the store can add URLs and answer crawl-wide questions (the control API
    uses it so to start a crawl), but claims nothing."""

    def __init__(self, client: Any, crawl_id: str, partitions: PartitionManager | None = None) -> None:
        self.redis = client
        self.crawl_id = crawl_id
        self.mgr = partitions
        self.P = partitions.partitions if partitions is not None else partition_count(client)
        self._claims: dict[int, tuple[int, int]] = {}  # url id -> (partition, epoch claimed under)
        self._gained: list[int] = []  # partitions adopted since the last changed_hosts()
        # host -> (partition, epoch) of each request in flight to it
        self._requests: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        # hosts whose last gate_start raised or did not start its URL: the engine gives that gate
        # back at once (its _cancel_gate: save_host, end=True), and there is nothing to give back
        self._untaken: set[str] = set()
        self._expired_on_gain = 0
        self.fenced = 0  # writes this store refused to make or the server refused
        # Requests this worker made that the server may count twice (websim's duplicate fetches):
        # a final answer (2xx-4xx but 408/425/429) whose outcome could not be recorded (fenced:
        # the partition's new owner asks again; or another worker had recorded it first), and
        # retries after no answer at all (a timeout: the server may have answered too late).
        self.answers_lost = 0
        self.unanswered_retries = 0
        self._already_final = 0  # finishes that found the URL final already
        self._budget_seen: int | None = None  # the page budget's counter as last seen, and the
        self._budget_limit: int | None = None  # limit of the last reservation (pages_reserved)
        self._empty_claim: tuple[str, float | None] | None = None  # (host, its ready time)
        self._cluster = _is_cluster(client)  # one slot per call there: no multi-partition pipelines
        run = client.register_script
        self._add, self._reserve_s, self._host_read_s = run(_ADD), run(_RESERVE), run(_HOST_READ)
        self._claim_s, self._start_s, self._finish_s = run(_CLAIM), run(_START), run(_FINISH)
        self._retry_s, self._unlease_s, self._inbox_s = run(_RETRY), run(_UNLEASE), run(_INBOX)
        self._hset_s, self._host_s, self._gate_start_s = run(_HSET_FENCED), run(_HOST), run(_GATE_START)
        if not self._cluster:  # loaded before their first use (some are pipelined by SHA: _run_all)
            pipe = client.pipeline(transaction=False)
            for script in (self._add, self._reserve_s, self._host_read_s, self._claim_s, self._start_s,
                           self._finish_s, self._retry_s, self._unlease_s, self._hset_s, self._host_s,
                           self._inbox_s, self._gate_start_s):  # fmt: skip
                pipe.script_load(script.script)
            pipe.execute()
        if partitions is not None:
            partitions.on_gain.append(self._on_gain)
            partitions.on_resume.append(self._on_resume)
            for p in partitions.owned:
                self._gained.append(p)

    # -- keys --------------------------------------------------------------------------------
    def _kp(self, p: int) -> str:
        return f"pg:c:{self.crawl_id}:{tag(p)}:"

    def partition(self, host: str) -> int:
        return partition_of(host, self.P)

    def _host_key(self, kind: str, host: str) -> tuple[int, str]:
        """The partition of a host and the key of its shared record (kind: host, robots)."""
        p = self.partition(host)
        return p, f"pg:{kind}:{tag(p)}:{host}"

    def _owned(self) -> list[int]:
        if self.mgr is None:
            return []
        return list(self.mgr.owned)

    def _fenced_call(self, script: Any, p: int, epoch: int, extra_key: str, args: list[Any]) -> Any:
        assert self.mgr is not None, "a RedisStore without a PartitionManager cannot write"
        keys = [*self.mgr.fence_keys(p), extra_key]
        res = script(keys=keys, args=[self.mgr.worker_id, epoch, *args])
        if isinstance(res, int) and res == -1:
            self.fenced += 1
            raise self.mgr.refused(p, epoch)
        return res

    def _on_partition(self, script: Any, p: int, epoch: int, *args: Any) -> Any:
        """Run a `_partition_script` on partition p's keys under `epoch` (Fenced if refused)."""
        kp = self._kp(p)
        return self._fenced_call(script, p, epoch, kp + "n", [kp, *args])

    def _claim_epoch(self, url_id: int) -> tuple[int, int]:
        p = url_id % ID_STRIDE
        assert self.mgr is not None
        claimed = self._claims.get(url_id)
        epoch = self.mgr.write_epoch(p) if claimed is None else claimed[1]
        if claimed is not None:
            try:
                current = self.mgr.write_epoch(p)
            except Fenced:
                self.fenced += 1
                raise
            if current != epoch:
                self.fenced += 1
                raise Fenced(f"partition {p}: claimed under epoch {epoch}, now {current}")
        return p, epoch

    def _end_claim(self, url_id: int) -> None:
        claimed = self._claims.pop(url_id, None)
        if claimed is not None and self.mgr is not None:
            self.mgr.done(*claimed)

    # -- partition changes -------------------------------------------------------------------
    def _on_gain(self, p: int, epoch: int) -> None:
        # Any URL leased in an adopted partition belongs to a previous epoch, whose owner can no
        # longer write it: hand it back now rather than after its lease runs out.
        try:
            self._expired_on_gain += self._on_partition(self._unlease_s, p, epoch, time.time(), "**")
        except Fenced:
            return
        self._gained.append(p)

    def _on_resume(self, p: int, epoch: int) -> None:
        # Trusted again under the same epoch (partitions.py): the turns its hosts took while the
        # lease was not trusted ended Fenced and dropped them; they are scheduled again.
        self._gained.append(p)

    async def _until_trusted(self, url_id: int) -> None:
        """Before writing a claimed URL's outcome: while its partition is still ours under the
        claim's epoch but not trusted locally (the renewal is late: a starved process), wait
        for the ticker's renewal (it renews every lease/3) or the loss, at most one lease,
        instead of refusing the write at once. A refusal would lose the response in hand and
        the page would be fetched again; the store still fences the write by its epoch."""
        mgr = self.mgr
        claimed = self._claims.get(url_id)
        if mgr is None or claimed is None:
            return
        p, epoch = claimed
        deadline = time.monotonic() + mgr.lease_seconds
        while time.monotonic() < deadline:
            own = mgr.owned.get(p)
            if own is None or own.epoch != epoch or mgr.clock() < own.valid_until:
                return
            await asyncio.sleep(_TRUST_POLL_S)

    async def afinish(self, f: Finish) -> int:
        """`finish`, once the URL's partition is trusted (_until_trusted)."""
        await self._until_trusted(f.url_id)
        final = _final_answer(f.outcome.status)
        already = self._already_final
        try:
            return self.finish(f)
        except Fenced:
            if final:
                self._asked_twice("answers_lost")  # the partition's new owner asks the page again
            raise
        finally:
            if final and self._already_final > already:
                self._asked_twice("answers_lost")  # another worker had finished it: asked again

    async def aretry(self, url_id: int, not_before: float, error: str, status: int | None = None) -> None:
        await self._until_trusted(url_id)
        if status is None:
            self._asked_twice("unanswered_retries")  # the server may have answered after we gave up
        self.retry(url_id, not_before, error, status)

    def _asked_twice(self, what: str) -> None:
        """Count a request the server may see twice, here and in the crawl's hash in Redis
        (asked_twice_counts: the counts of every worker, a killed one's too)."""
        setattr(self, what, getattr(self, what) + 1)
        self.redis.hincrby(crawl_key(self.crawl_id, "asked_twice"), what, 1)

    def changed_hosts(self) -> list[tuple[str, float]]:
        """Hosts to (re)schedule: every ready host of partitions adopted since the last call and
        the hosts other workers (or this one) added URLs for."""
        if self.mgr is None:
            return []
        out: list[tuple[str, float]] = []
        gained, self._gained = self._gained, []
        for p in gained:
            if p in self.mgr.owned:
                out += [
                    (_s(h), float(t))
                    for h, t in self.redis.zrange(self._kp(p) + "ready", 0, -1, withscores=True)
                ]
        owned = list(self.mgr.owned)
        if owned and not self._cluster:  # one round trip: each partition's inbox and ready times
            calls = [(self._inbox_s, [self._kp(p) + "inbox", self._kp(p) + "ready"], [1000]) for p in owned]
            for pairs in self._run_all(calls):
                out += [(_s(h), float(t)) for h, t in zip(pairs[0::2], pairs[1::2], strict=True)]
        elif owned:
            pipe = self.redis.pipeline(transaction=False)
            for p in owned:
                pipe.spop(self._kp(p) + "inbox", 1000)
            hosts = {_s(h) for popped in pipe.execute() for h in (popped or [])}
            if hosts:
                pipe = self.redis.pipeline(transaction=False)
                for h in hosts:
                    pipe.zscore(self._kp(self.partition(h)) + "ready", h)
                for h, t in zip(hosts, pipe.execute(), strict=True):
                    if t is not None:
                        out.append((h, float(t)))
        return out

    # -- FrontierStore -----------------------------------------------------------------------
    def add(
        self, urls: list[NewURL], *, max_per_host: int | None = None, now: float, max_depth: int | None = None
    ) -> int:
        new = 0
        todo = list(urls)
        steps = 0
        while todo and steps < _MAX_CASCADE:
            groups = self._by_partition(todo)
            calls = [(self._add, [self._kp(p) + "n"], self._add_args(p, g, now, max_per_host, max_depth))
                     for p, g in groups.items()]  # fmt: skip
            got, todo, steps = self._added(self._run_all(calls), steps)
            new += got
        return new

    def _by_partition(self, urls: Sequence[NewURL]) -> dict[int, list[NewURL]]:
        groups: dict[int, list[NewURL]] = defaultdict(list)
        for u in urls:
            groups[self.partition(u.host)].append(u)
        return groups

    def _add_args(
        self, p: int, urls: list[NewURL], now: float, max_per_host: int | None, max_depth: int | None
    ) -> list[Any]:
        args: list[Any] = [self._kp(p), now, max_per_host or "", "" if max_depth is None else max_depth, p]
        return args + self._url_tuples(urls)

    @staticmethod
    def _url_tuples(urls: list[NewURL]) -> list[Any]:
        out: list[Any] = []
        for u in urls:
            out += [url_key(u.url), u.url, u.host, u.depth, u.redirects, u.via or ""]
        return out

    def _added(self, results: list[Any], steps: int) -> tuple[int, list[NewURL], int]:
        """Add scripts' answers ({new, lowered depth, edges, ...}, one per partition) -> new URLs,
        the links of the lowered FETCHED URLs to add again at their lower depth, steps taken."""
        new = 0
        todo: list[NewURL] = []
        for res in results:
            new += int(res[0])
            lowered = res[1:]
            for i in range(0, len(lowered), 2):
                steps += 1
                todo += self._children(lowered[i + 1], int(lowered[i]))
        return new, todo, steps

    def _run_all(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        """Run (script, keys, args) calls in order; on one Redis in one round trip (a pipeline,
        executed in this order), on a Cluster one by one (their keys are in different slots)."""
        if len(calls) <= 1 or self._cluster:
            return [script(keys=keys, args=args) for script, keys, args in calls]
        import redis

        for attempt in (0, 1):
            pipe = self.redis.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            try:
                return list(pipe.execute())
            except redis.exceptions.NoScriptError:
                # A Redis restarted or flushed since the store loaded them: load and go again
                # (every call here is idempotent: an add adds nothing twice, a second finish of
                # a URL already final writes nothing).
                if attempt:
                    raise
                for script, _, _ in calls:
                    self.redis.script_load(script.script)
        raise AssertionError("unreachable")

    @staticmethod
    def _children(raw: Any, depth: int) -> list[NewURL]:
        """The links a FETCHED page kept (its edges JSON), at its depth now."""
        if not raw:
            return []
        return [
            NewURL(url, host, depth + delta, red, via or None)
            for url, host, delta, red, via in json.loads(raw)
        ]

    def claim(self, host: str, owner: str, lease_seconds: float, now: float) -> URLRecord | None:
        self._empty_claim = None
        if self.mgr is None:
            return None
        p = self.partition(host)
        with self.mgr.lock:  # counted before the claim, so a draining partition waits for it
            epoch = self.mgr.claim_epoch(p)
            if epoch is None:
                return None
            self.mgr.inflight[(p, epoch)] += 1
        res = None
        try:
            res = self._on_partition(self._claim_s, p, epoch, host, now, now + lease_seconds, owner)
        finally:
            if not res or int(res[0]) == 0:
                self.mgr.done(p, epoch)
        if not res or int(res[0]) == 0:
            # The answer to the next_ready_at(host) that follows an empty claim (the engine's turn)
            self._empty_claim = (host, float(res[1]) if res and _s(res[1]) != "" else None)
            return None
        url_id = int(res[0])
        self._claims[url_id] = (p, epoch)
        return URLRecord(
            url_id, _s(res[1]), _s(res[2]), int(res[3]), int(res[4]), _s(res[5]) or None,
            URLState.SCHEDULED, int(res[6]),
        )  # fmt: skip

    def start(self, url_id: int, owner: str, lease_seconds: float, now: float) -> bool:
        p, epoch = self._claim_epoch(url_id)
        return bool(self._on_partition(self._start_s, p, epoch, url_id, now + lease_seconds, owner))

    def finish(self, f: Finish) -> int:
        assert f.outcome.state in (URLState.FETCHED, URLState.FAILED)
        p, epoch = self._claim_epoch(f.url_id)  # checked before anything is written
        assert self.mgr is not None
        kp = self._kp(p)
        edges = ""
        if f.new_urls and f.parent_depth is None:
            state, depth_raw = self.redis.hmget(kp + f"u:{f.url_id}", "s", "d")
            if state is None or int(state) in (URLState.FETCHED, URLState.FAILED):
                self._end_claim(f.url_id)
                self._already_final += state is not None
                return 0  # already final: a second finish (at-least-once fetch) changes nothing
            depth_now = base = int(depth_raw or 0)
        else:  # the depth the caller claimed it at; the script says if it was lowered since
            depth_now = base = f.parent_depth or 0
        if f.new_urls and f.max_depth is not None:
            edges = json.dumps(
                [[u.url, u.host, u.depth - base, u.redirects, u.via or ""] for u in f.new_urls]
            )
        # Links first, then the fenced outcome, in this order: a crash in between refetches the
        # page and adds nothing twice. Links to other partitions go by their own add scripts
        # (idempotent, unfenced, any partition); the links of the page's own partition are added
        # by the finish script itself. On one Redis all of it is one pipeline: one round trip.
        groups = self._by_partition(f.new_urls)
        own = groups.pop(p, [])
        o = f.outcome
        fin_args = [kp, f.url_id, int(o.state), o.status or "", o.content_sha256 or "", o.error or "",
                    o.fetched_at or "", edges, f.now, f.max_per_host or "",
                    "" if f.max_depth is None else f.max_depth, p, *self._url_tuples(own)]  # fmt: skip
        calls = [(self._add, [self._kp(q) + "n"], self._add_args(q, g, f.now, f.max_per_host, f.max_depth))
                 for q, g in groups.items()]  # fmt: skip
        fence = [*self.mgr.fence_keys(p), kp + "n"]
        calls.append((self._finish_s, fence, [self.mgr.worker_id, epoch, *fin_args]))
        results = self._run_all(calls)
        res = results.pop()
        self._end_claim(f.url_id)
        new, todo, steps = self._added(results, 0)
        if isinstance(res, int) and res == -1:
            self.fenced += 1
            raise self.mgr.refused(p, epoch)
        if isinstance(res, int) and res == 0:
            self._already_final += 1
        if res and not isinstance(res, int):  # 0: it was final already (nothing written here)
            depth = int(res[0]) - 1
            got, more, steps = self._added([res[1:]], steps)
            new += got
            todo += more
            if depth < depth_now:  # a shorter path was found meanwhile: its links again, lower
                todo += [
                    NewURL(u.url, u.host, depth + u.depth - base, u.redirects, u.via) for u in f.new_urls
                ]
        if todo:
            new += self.add(todo, max_per_host=f.max_per_host, now=f.now, max_depth=f.max_depth)
        return new

    def retry(self, url_id: int, not_before: float, error: str, status: int | None = None) -> None:
        p, epoch = self._claim_epoch(url_id)
        self._on_partition(self._retry_s, p, epoch, url_id, not_before, error, status or "", time.time())
        self._end_claim(url_id)

    def release(self, url_id: int) -> None:
        p, epoch = self._claim_epoch(url_id)
        self._on_partition(self._unlease_s, p, epoch, time.time(), url_id)
        self._end_claim(url_id)

    def expire_leases(self, now: float) -> int:
        n, self._expired_on_gain = self._expired_on_gain, 0
        if self.mgr is None:
            return n
        calls, parts = [], []
        for p in list(self.mgr.owned):
            try:
                epoch = self.mgr.write_epoch(p)
            except Fenced:
                continue
            kp = self._kp(p)
            calls.append(
                (
                    self._unlease_s,
                    [*self.mgr.fence_keys(p), kp + "n"],
                    [self.mgr.worker_id, epoch, kp, now, "*"],
                )
            )
            parts.append((p, epoch))
        for (p, epoch), res in zip(parts, self._run_all(calls), strict=True):  # one round trip
            if int(res) == -1:
                self.fenced += 1
                self.mgr.refused(p, epoch)  # lost meanwhile: its new owner hands them back
            else:
                n += int(res)
        return n

    def pending_hosts(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        for p in self._owned():
            out += [
                (_s(h), float(t)) for h, t in self.redis.zrange(self._kp(p) + "ready", 0, -1, withscores=True)
            ]
        return out

    def next_ready_at(self, host: str) -> float | None:
        empty, self._empty_claim = self._empty_claim, None
        if empty is not None and empty[0] == host:
            return empty[1]  # what the empty claim just read in the same script: no round trip
        p = self.partition(host)
        if self.mgr is None or self.mgr.claim_epoch(p) is None:
            return None
        t = self.redis.zscore(self._kp(p) + "ready", host)
        return None if t is None else float(t)

    def earliest_lease_expiry(self) -> float | None:
        best: float | None = None
        for p in self._owned():
            first = self.redis.zrange(self._kp(p) + "leases", 0, 0, withscores=True)
            if first and (best is None or first[0][1] < best):
                best = float(first[0][1])
        return best

    def first_with_content(self, sha256: str, url_id: int) -> int:
        old = self.redis.set(f"pg:c:{self.crawl_id}:sha:{sha256}", url_id, nx=True, get=True)
        return url_id if old is None else int(old)

    def _count_rows(self, keys: list[str]) -> list[dict[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        out = []
        for raw in pipe.execute():
            d = {s.name: 0 for s in URLState}
            for k, v in raw.items():
                d[URLState(int(k)).name] = int(v)
            out.append(d)
        return out

    def counts(self) -> dict[str, int]:
        total = {s.name: 0 for s in URLState}
        for d in self._count_rows([self._kp(p) + "n" for p in range(self.P)]):
            for k, v in d.items():
                total[k] += v
        return total

    def partition_counts(self) -> list[dict[str, int]]:
        return self._count_rows([self._kp(p) + "n" for p in range(self.P)])

    def host_counts(self, host: str) -> dict[str, int]:
        return self._count_rows([self._kp(self.partition(host)) + "hn:" + host])[0]

    def hosts(self) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.P):
            pipe.smembers(self._kp(p) + "hosts")
        return sorted({_s(h) for members in pipe.execute() for h in members})

    def bloom_stats(self) -> dict[str, Any] | None:
        """The Bloom filter over all partitions (configure_bloom), or None without one: its shape,
        URLs added, lookups it saved (certainly new), and its false-positive rate as measured
        here: of the absent URLs looked up, the share it called "maybe seen"."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.P):
            pipe.hmget(self._kp(p) + "bfc", "m", "k")
            pipe.hgetall(self._kp(p) + "bfs")
        res = pipe.execute()
        shapes, counts = res[0::2], res[1::2]
        if not any(m is not None for m, _ in shapes):
            return None
        total = {"added": 0, "skips": 0, "false_positives": 0}
        for row in counts:
            for k, v in row.items():
                total[_s(k)] = total.get(_s(k), 0) + int(v)
        bits = sum(int(m) for m, _ in shapes if m is not None)
        absent = total["skips"] + total["false_positives"]
        return {
            "bits": bits,
            "hashes": int(shapes[0][1]),
            "memory_bytes": bits // 8,
            **total,
            "false_positive_rate": total["false_positives"] / absent if absent else None,
        }

    def quiescent(self) -> bool:
        c = self.counts()
        return c["DISCOVERED"] + c["SCHEDULED"] + c["FETCHING"] + c["RETRYABLE"] == 0

    def set_meta(self, key: str, value: str) -> None:
        self.redis.hset(crawl_key(self.crawl_id, "meta"), key, value)

    def reserve_page(self, limit: int) -> bool:
        ok, n = self._reserve_s(keys=[crawl_key(self.crawl_id, "budget")], args=[limit])
        self._budget_seen, self._budget_limit = int(n), limit
        return bool(ok)

    def unreserve_page(self) -> None:
        self._budget_seen = int(self.redis.decr(crawl_key(self.crawl_id, "budget")))

    def pages_reserved(self) -> int:
        """The counter as this store last saw it while that was below the limit of its last
        reservation (other workers may have taken more since: reserve_page decides, and a refused
        reservation updates it); read from Redis otherwise. No round trip per turn of the loop."""
        seen, limit = self._budget_seen, self._budget_limit
        if seen is not None and limit is not None and seen < limit:
            return seen
        self._budget_seen = int(self.redis.get(crawl_key(self.crawl_id, "budget")) or 0)
        return self._budget_seen

    # -- per-host records (politeness, robots), shared by every crawl --------------------------
    def _host_write(self, kind: str, host: str, fields: dict[str, Any], ttl_ms: int | None = None) -> None:
        assert self.mgr is not None
        p, key = self._host_key(kind, host)
        epoch = self.mgr.write_epoch(p)
        flat: list[Any] = []
        for k, v in fields.items():
            flat += [k, "" if v is None else v]
        self._fenced_call(self._hset_s, p, epoch, key, ["" if ttl_ms is None else ttl_ms, *flat])

    def _host_args(self, mode: str, now: float, record: dict[str, float | None]) -> list[Any]:
        """Times in `record` are this process's wall clock: sent as seconds from now."""
        nxt, until = record.get("next"), record.get("retry_until")
        args: list[Any] = [
            mode,
            "" if nxt is None else nxt - now,
            "" if until is None else max(0.0, until - now),
        ]
        for k, v in record.items():
            if k not in ("next", "retry_until"):
                args += [k, "" if v is None else v]
        return args

    def may_request(self, host: str) -> bool:
        if self.mgr is None:
            return False
        try:
            self.mgr.write_epoch(self.partition(host))
        except Fenced:
            self.fenced += 1
            return False
        return True

    def gate_host(self, host: str, now: float, record: dict[str, float | None]) -> float | None:
        assert self.mgr is not None
        self._untaken.discard(host)
        p, key = self._host_key("host", host)
        with self.mgr.lock:  # a request in flight: a draining partition waits for its end (save_host)
            epoch = self.mgr.write_epoch(p)
            self.mgr.inflight[(p, epoch)] += 1
        res: Any = None
        try:
            res = self._fenced_call(self._host_s, p, epoch, key, self._host_args("gate", now, record))
        finally:
            if res != 0:
                self.mgr.done(p, epoch)
        if res != 0:
            return now + float(res)
        self._requests[host].append((p, epoch))
        return None

    async def agate_start(
        self,
        host: str,
        now: float,
        record: dict[str, float | None],
        url_id: int,
        owner: str,
        lease_seconds: float,
    ) -> tuple[float | None, bool]:
        return self.gate_start(host, now, record, url_id, owner, lease_seconds)

    def gate_start(
        self,
        host: str,
        now: float,
        record: dict[str, float | None],
        url_id: int,
        owner: str,
        lease_seconds: float,
    ) -> tuple[float | None, bool]:
        """gate_host and start in one fenced script (one round trip), under the epoch the URL was
        claimed with (Fenced if the partition changed hands since)."""
        assert self.mgr is not None
        p, key = self._host_key("host", host)
        self._untaken.discard(host)
        try:
            up, epoch = self._claim_epoch(url_id)
        except Fenced:
            self._untaken.add(host)
            raise
        assert up == p, "a URL lives in its host's partition"
        with self.mgr.lock:  # a request in flight: a draining partition waits for its end (save_host)
            self.mgr.inflight[(p, epoch)] += 1
        res: Any = None
        try:
            args = [self._kp(p), url_id, time.time() + lease_seconds, owner,
                    *self._host_args("gate", now, record)[1:]]  # fmt: skip
            res = self._fenced_call(self._gate_start_s, p, epoch, key, args)
        finally:
            if res != 1:
                self.mgr.done(p, epoch)
            if res is None or res == 0:  # raised, or the gate passed no URL: nothing was taken
                self._untaken.add(host)
        if res == 1:
            self._requests[host].append((p, epoch))
            return None, True
        if res == 0:
            return None, False
        return now + float(res), False

    def load_host(self, host: str) -> dict[str, float | None] | None:
        """The record with its times in this process's wall clock."""
        res = self._host_read_s(keys=[self._host_key("host", host)[1]])
        if len(res) <= 2:
            return None
        offset = (int(res[0]) + int(res[1]) / 1e6) - time.time()  # server clock minus ours
        out: dict[str, float | None] = {}
        for k, v in zip(res[2::2], res[3::2], strict=True):
            value = float(v) if _s(v) != "" else None
            if value is not None and _s(k) in ("next", "retry_until"):
                value -= offset
            out[_s(k)] = value
        return out

    def save_host(self, host: str, record: dict[str, float | None], *, end: bool = True) -> None:
        """Write the host's politeness record; `end`: the request it was for has ended (no
        longer in flight), or its gate is given back unused (the engine's _cancel_gate).

        With `end`, only a gate this store took (gate_host, gate_start) is ended, and its record
        is written under that gate's epoch: refused (Fenced) if the partition changed hands
        since, even if it came back to this worker (the record may hold another owner's gap).
        The give-back of a gate that was not taken (the last gate_start raised or started no
        URL) writes nothing and ends no other request in flight."""
        assert self.mgr is not None
        pending = self._requests.get(host)
        if end and host in self._untaken:
            self._untaken.discard(host)
            return
        request = pending.pop(0) if pending and end else None
        try:
            p, key = self._host_key("host", host)
            epoch = self.mgr.write_epoch(p)
            if request is not None and request[1] != epoch:
                self.fenced += 1
                raise Fenced(f"partition {p}: the gate was taken under epoch {request[1]}, now {epoch}")
            self._fenced_call(self._host_s, p, epoch, key, self._host_args("save", time.time(), record))
        finally:
            if request is not None:
                self.mgr.done(*request)
            if pending is not None and not pending:
                self._requests.pop(host, None)

    def load_robots(self, host: str) -> dict[str, Any] | None:
        raw = self.redis.hgetall(self._host_key("robots", host)[1])
        if not raw:
            return None
        return {_s(k): (v if k == b"body" else _s(v)) for k, v in raw.items()}

    def save_robots(self, host: str, record: dict[str, Any], ttl: float) -> None:
        self._host_write("robots", host, record, max(1, int(ttl * 1000)))

    def close(self) -> None:
        if self.mgr is not None and self._on_gain in self.mgr.on_gain:
            self.mgr.on_gain.remove(self._on_gain)
        if self.mgr is not None and self._on_resume in self.mgr.on_resume:
            self.mgr.on_resume.remove(self._on_resume)


def register_crawl(
    client: Any,
    crawl_id: str,
    config_json: str,
    seeds: list[NewURL],
    max_depth: int | None,
    *,
    bloom_capacity: int | None = None,
) -> int:
    """Create (or resume) a crawl in Redis: its config, its seeds, and its id in the crawl set
    workers watch; with `bloom_capacity` a Bloom filter in front of its seen-set (configure_bloom).
    Returns how many seeds were new."""
    if bloom_capacity:
        configure_bloom(client, crawl_id, bloom_capacity)
    store = RedisStore(client, crawl_id)
    new = store.add(seeds, now=time.time(), max_depth=max_depth)
    client.hset(
        crawl_key(crawl_id, "meta"),
        mapping={"config": config_json, "state": "running", "created_at": time.time()},
    )
    client.sadd(CRAWLS_KEY, crawl_id)
    return new


def asked_twice_counts(client: Any, crawl_id: str) -> dict[str, int]:
    """What every worker of the crawl counted as requests the server may see twice
    (RedisStore.answers_lost, unanswered_retries), kept in Redis so a killed worker's count stays."""
    raw = client.hgetall(crawl_key(crawl_id, "asked_twice"))
    counts = {"answers_lost": 0, "unanswered_retries": 0}
    counts.update({_s(k): int(v) for k, v in raw.items()})
    return counts


def crawl_state(client: Any, crawl_id: str) -> str | None:
    v = client.hget(crawl_key(crawl_id, "meta"), "state")
    return None if v is None else _s(v)


def list_crawls(client: Any) -> list[str]:
    return sorted(_s(c) for c in client.smembers(CRAWLS_KEY))


def redis_crawl_status(client: Any, crawl_id: str) -> dict[str, Any] | None:
    """A crawl's state and URL counts from its Redis counters (whole crawl and per partition)."""
    meta = {_s(k): _s(v) for k, v in client.hgetall(crawl_key(crawl_id, "meta")).items()}
    if not meta:
        return None
    store = RedisStore(client, crawl_id)
    per_partition = store.partition_counts()
    counts = {s.name: sum(p[s.name] for p in per_partition) for s in URLState}
    return {
        "crawl_id": crawl_id,
        "backend": "redis",
        "state": meta.get("state"),
        "urls": counts,
        "frontier_size": counts["DISCOVERED"] + counts["RETRYABLE"],
        "pages_reserved": store.pages_reserved(),
        "partitions": [{"partition": p, "urls": c} for p, c in enumerate(per_partition)],
        "created_at": float(meta.get("created_at") or 0),
    }


def redis_host_view(client: Any, crawl_id: str, host: str) -> dict[str, Any] | None:
    """One host as every worker sees it: the crawl's URLs there, the host's shared politeness
    record (its times as seconds from now) and its shared robots.txt answer; None if unknown."""
    store = RedisStore(client, crawl_id)
    urls = store.host_counts(host)
    record = store.load_host(host)
    robots = store.load_robots(host)
    if not any(urls.values()) and record is None and robots is None:
        return None
    now = time.time()
    politeness = None
    if record is not None:
        nxt, until = record.get("next"), record.get("retry_until")
        politeness = {
            "next_eligible_in_seconds": None if nxt is None else round(max(0.0, nxt - now), 3),
            "retry_after_in_seconds": None if until is None else round(max(0.0, until - now), 3),
            "crawl_delay": record.get("crawl_delay"),
            "backoff_multiplier": record.get("backoff"),
        }
    return {
        "host": host,
        "partition": store.partition(host),
        "urls": urls,
        "politeness": politeness,
        "robots": None if robots is None else {k: robots.get(k) for k in ("status", "error", "fetched_at")},
    }
