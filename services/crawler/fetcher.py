"""HTTP fetch layer: one GET, bounded in time and size, with an SSRF guard and an explicit resolver map.

Exceptions (the designed surface, httpx-style; aiohttp errors are translated in `_translate` only):

    FetchError                  any fetch that produced no HTTP response
    +-- TimeoutException        the server was too slow          (retryable)
    |   +-- ConnectTimeout      no connection within connect_timeout
    |   +-- ReadTimeout         no bytes within read_timeout / whole response over total_timeout
    +-- NetworkError            the network failed               (retryable)
    |   +-- ConnectError        connection refused / DNS failure
    |   +-- ConnectionDropped   the server closed the connection mid-response
    +-- ProtocolError           the server spoke broken HTTP      (not retried)
    +-- BlockedAddress          the SSRF guard refused the target (never retried)

Redirects are not followed here: a 3xx comes back as a FetchResult with `location`, and the engine
enqueues the target as a new URL so that it gets its own robots check and politeness slot.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import socket
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from services.crawler.settings import FetchConfig


class FetchError(Exception):
    """A fetch that produced no HTTP response."""

    retryable = False

    def __init__(self, message: str, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class TimeoutException(FetchError):
    """The server did not answer in time."""

    retryable = True


class ConnectTimeout(TimeoutException):
    """No connection could be opened within connect_timeout."""


class ReadTimeout(TimeoutException):
    """The response stalled longer than read_timeout, or took longer than total_timeout."""


class NetworkError(FetchError):
    """The network failed underneath the request."""

    retryable = True


class ConnectError(NetworkError):
    """The connection was refused, or the name did not resolve."""


class ConnectionDropped(NetworkError):
    """The server closed the connection before the response was complete."""


class ProtocolError(FetchError):
    """The server sent something that is not valid HTTP."""


class BlockedAddress(FetchError):
    """The SSRF guard refused a private, loopback, link-local or otherwise non-global target."""


class _BlockedOSError(OSError):
    """Raised inside the resolver; aiohttp wraps OSErrors, `_translate` unwraps this one."""


@dataclass(frozen=True)
class ResolveRule:
    pattern: str
    ip: str  # an IP literal, or a host name (e.g. a compose service) resolved when used
    port: int

    @classmethod
    def parse(cls, spec: str) -> ResolveRule:
        """'*.sim.test=127.0.0.1:8090' or '*.sim.test=websim:8090' (names: for containers)."""
        pattern, sep, target = spec.partition("=")
        addr, sep2, port = target.rpartition(":")
        addr = addr.strip("[]")
        if not sep or not sep2 or not pattern or not addr or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"resolve entry {spec!r}: expected HOSTPATTERN=IP:PORT or HOSTPATTERN=NAME:PORT")
        try:
            ipaddress.ip_address(addr)
        except ValueError:
            if not all(
                label and label.replace("-", "").replace("_", "").isalnum() for label in addr.split(".")
            ):
                raise ValueError(
                    f"resolve entry {spec!r}: {addr!r} is neither an IP nor a host name"
                ) from None
        return cls(pattern.lower(), addr, int(port))


class ResolverMap(AbstractResolver):
    """Resolve names from an explicit map first; everything else through DNS, behind the SSRF guard."""

    def __init__(self, rules: list[ResolveRule], *, allow_private: bool = False) -> None:
        self.rules = rules
        self.allow_private = allow_private
        self._dns = aiohttp.ThreadedResolver()

    def lookup(self, host: str) -> ResolveRule | None:
        host = host.lower().rstrip(".")
        for rule in self.rules:
            if fnmatch.fnmatchcase(host, rule.pattern):
                return rule
        return None

    def address_allowed(self, ip: str) -> bool:
        return self.allow_private or ipaddress.ip_address(ip).is_global

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        rule = self.lookup(host)
        if rule is not None:
            # An explicit map entry is the opt-in for a loopback/private target (curl --resolve).
            try:
                ipaddress.ip_address(rule.ip)
            except ValueError:  # a name: resolve it, keep the mapped port, skip the guard
                found = await self._dns.resolve(rule.ip, rule.port, family)
                return [ResolveResult(**{**r, "hostname": host, "port": rule.port}) for r in found]
            fam = socket.AF_INET6 if ":" in rule.ip else socket.AF_INET
            return [
                ResolveResult(
                    hostname=host,
                    host=rule.ip,
                    port=rule.port,
                    family=fam,
                    proto=0,
                    flags=socket.AI_NUMERICHOST,
                )
            ]
        results = await self._dns.resolve(host, port, family)
        allowed = [r for r in results if self.address_allowed(r["host"])]
        if not allowed:
            raise _BlockedOSError(f"{host} resolves only to non-global addresses")
        return allowed

    async def close(self) -> None:
        await self._dns.close()


@dataclass
class FetchResult:
    url: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    content_type: str  # media type, lower-case, no parameters
    charset: str | None
    truncated: bool
    body_skipped: bool  # content type not on the allow list: body not read
    location: str | None
    started_at: float  # wall clock
    elapsed: float
    http_version: str = "1.1"
    request_headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class Fetcher:
    """Parallel-safe async fetcher; one aiohttp session, transports injected through the resolver."""

    def __init__(
        self, config: FetchConfig, resolver: ResolverMap, user_agent: str, *, concurrency: int = 64
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.user_agent = user_agent
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        # Built once: the same for every request (aiohttp copies the headers into each request).
        self._headers = {
            "User-Agent": user_agent,
            "Accept": "text/html,application/xhtml+xml;q=0.9,*/*;q=0.1",
            "Accept-Encoding": "gzip, deflate",
        }
        self._timeout = aiohttp.ClientTimeout(
            total=config.total_timeout, sock_connect=config.connect_timeout, sock_read=config.read_timeout
        )

    async def __aenter__(self) -> Fetcher:
        connector = aiohttp.TCPConnector(
            resolver=self.resolver,
            limit=self._concurrency,
            limit_per_host=0,
            ttl_dns_cache=60,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()
        )
        # aiohttp silently re-sends an idempotent request once when a kept-alive connection drops.
        # That second request would bypass the host's politeness slot and the retry accounting,
        # so it is switched off: every request the server sees is one the frontier allowed.
        self._session._retry_connection = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _guard_literal(self, url: URL) -> None:
        host = url.raw_host or ""  # (no IDNA decoding: an IP literal reads the same either way)
        if not host or not (host[0].isdigit() or ":" in host):
            return  # a name (IPv4 literals start with a digit, IPv6 ones hold a colon)
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return
        if self.resolver.lookup(host) is None and not self.resolver.address_allowed(str(ip)):
            raise BlockedAddress(f"refusing non-global address {ip}", str(url))

    async def fetch(
        self, url: str, *, max_body_bytes: int | None = None, allowed_types: list[str] | None = None
    ) -> FetchResult:
        assert self._session is not None, "use `async with Fetcher(...)`"
        cfg = self.config
        target = URL(url, encoded=True)  # send exactly the normalised bytes
        self._guard_literal(target)
        limit = cfg.max_body_bytes if max_body_bytes is None else max_body_bytes
        allowed = cfg.allowed_content_types if allowed_types is None else allowed_types
        headers = self._headers
        timeout = self._timeout
        started_at = time.time()
        t0 = time.monotonic()
        try:
            async with self._session.get(
                target, headers=headers, allow_redirects=False, timeout=timeout
            ) as resp:
                media = (resp.content_type or "").lower()
                location = resp.headers.get("Location")
                body = bytearray()
                truncated = False
                skipped = bool(allowed) and media not in allowed and "*" not in allowed
                if not skipped:
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        room = limit - len(body)
                        if len(chunk) >= room:
                            body += chunk[:room]
                            truncated = len(chunk) > room or not resp.content.at_eof()
                            break
                        body += chunk
                if skipped or truncated:
                    resp.close()  # do not drain an unwanted or oversized body through the pool
                version = resp.version
                return FetchResult(
                    url=url,
                    status=resp.status,
                    headers=_raw_headers_str(resp),
                    body=bytes(body),
                    content_type=media,
                    charset=resp.charset,
                    truncated=truncated,
                    body_skipped=skipped,
                    location=location,
                    started_at=started_at,
                    elapsed=time.monotonic() - t0,
                    http_version=f"{version.major}.{version.minor}" if version else "1.1",
                    request_headers=list(resp.request_info.headers.items()),
                )
        except FetchError:
            raise
        except Exception as exc:
            raise _translate(exc, url) from exc


def _raw_headers_str(resp: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in resp.raw_headers]


def _translate(exc: BaseException, url: str) -> FetchError:
    """The one seam where aiohttp/OS errors become FetchError subclasses."""
    msg = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, _BlockedOSError):
        return BlockedAddress(str(exc.os_error), url)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectTimeout(msg, url)
    if isinstance(exc, aiohttp.SocketTimeoutError | asyncio.TimeoutError | TimeoutError):
        return ReadTimeout(msg, url)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ClientConnectorDNSError):
        return ConnectError(msg, url)
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | aiohttp.ClientOSError
        | ConnectionError,
    ):
        return ConnectionDropped(msg, url)
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.InvalidURL | ValueError):
        return ProtocolError(msg, url)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return ConnectionDropped(msg, url)
    return ProtocolError(msg, url)
