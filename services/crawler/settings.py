"""Configuration: one crawl (CrawlConfig, also the control API's request body) and the service."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

USER_AGENT = "ProvingGroundBot/0.1 (+http://127.0.0.1/bot)"
# The product token robots.txt groups are matched against (RFC 9309 section 2.2.1).
ROBOTS_TOKEN = "ProvingGroundBot"
# Trap guard defaults (traps.py): a calendar trap ends here, a real site's pagination rarely does.
DEFAULT_MAX_DEPTH = 50
DEFAULT_MAX_URLS_PER_PATTERN = 1000


class PolitenessConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_delay: float = Field(1.0, ge=0.0, le=3600.0, description="minimum seconds between requests to a host")
    max_delay: float = Field(
        120.0,
        ge=0.0,
        le=86400.0,
        description="max host delay: caps our own per-host delay; a host asking for a longer wait"
        " (Crawl-delay, Retry-After) is dropped from the crawl, never asked sooner (0: no limit)",
    )
    max_in_flight_per_host: int = Field(1, ge=1, le=64, description="concurrent requests per host")
    adaptive_factor: float = Field(
        1.0, ge=0.0, le=100.0, description="delay is at least this many times the host's mean latency"
    )
    respect_crawl_delay: bool = Field(True, description="honour robots.txt Crawl-delay")


class FetchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    connect_timeout: float = Field(5.0, gt=0, le=300, description="seconds to open a connection")
    read_timeout: float = Field(10.0, gt=0, le=300, description="seconds between bytes of a response")
    total_timeout: float = Field(30.0, gt=0, le=600, description="seconds for one whole response")
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="body bytes kept (after decoding)")
    max_redirects: int = Field(5, ge=0, le=50, description="redirect hops followed from one URL")
    allowed_content_types: list[str] = Field(
        default_factory=lambda: ["text/html", "application/xhtml+xml"],
        description="media types whose bodies are kept and parsed",
    )


class RetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(4, ge=1, le=20, description="fetch attempts per URL (first one included)")
    base_delay: float = Field(0.5, ge=0.0, le=600, description="backoff base in seconds")
    max_delay: float = Field(30.0, ge=0.0, le=3600, description="backoff cap in seconds")


class CrawlConfig(BaseModel):
    """Everything one crawl needs; the control API accepts exactly this as JSON."""

    model_config = ConfigDict(extra="forbid")

    seeds: list[str] = Field(..., min_length=1, description="absolute http(s) URLs to start from")
    scope: list[str] = Field(
        default_factory=list,
        description="host glob patterns allowed (e.g. '*.sim.test'); empty means the seeds' hosts",
    )
    max_pages: int = Field(10_000, ge=1, le=10_000_000, description="stop after this many fetched pages")
    max_depth: int | None = Field(
        DEFAULT_MAX_DEPTH, ge=0, le=1000, description="link hops from a seed; null = unlimited"
    )
    max_pages_per_host: int = Field(5_000, ge=1, description="URLs admitted per host (bounds traps)")
    max_urls_per_pattern: int | None = Field(
        DEFAULT_MAX_URLS_PER_PATTERN,
        ge=1,
        description="distinct URLs admitted per host and URL pattern (digits collapsed: /calendar/#/#),"
        " the trap guard; null = no such budget",
    )
    max_url_length: int = Field(2048, ge=64, le=65536, description="longer URLs are dropped")
    concurrency: int = Field(64, ge=1, le=4096, description="requests in flight across all hosts")
    user_agent: str = Field(USER_AGENT, min_length=1, description="User-Agent header on every request")
    politeness: PolitenessConfig = Field(default_factory=PolitenessConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    robots_ttl: float = Field(3600.0, gt=0, description="seconds a fetched robots.txt is trusted")
    robots_error_ttl: float = Field(
        300.0, gt=0, description="seconds a 5xx/unreachable robots.txt means disallow-all before refetch"
    )
    lease_seconds: float = Field(60.0, gt=0, le=86400, description="a claimed URL returns after this")
    skip_duplicate_content_links: bool = Field(
        False,
        description="do not extract links from a body whose SHA-256 was already seen (off: identical bodies"
        " under different URLs can still hold different relative links)",
    )

    @field_validator("lease_seconds")
    @classmethod
    def _lease_outlives_a_fetch(cls, lease: float, info: ValidationInfo) -> float:
        # A lease that can run out during a fetch would hand the URL to a second worker mid-fetch.
        fetch = info.data.get("fetch")
        if fetch is not None and lease <= fetch.total_timeout:
            raise ValueError(f"must exceed fetch.total_timeout ({fetch.total_timeout} s), got {lease}")
        return lease

    @field_validator("seeds")
    @classmethod
    def _seeds_are_http(cls, seeds: list[str]) -> list[str]:
        from services.crawler.urlnorm import InvalidURL, normalize

        for i, seed in enumerate(seeds):
            try:
                normalize(seed)
            except InvalidURL as exc:
                raise ValueError(f"seeds[{i}]: {exc}") from None
        return seeds
