"""The generated web as data: hosts, pages, links, redirects, and how a URL finds them.

Everything here is plain data produced by generator.py. The server renders it, the truth walks
it; neither parses HTML. Resource ids ("page ids") are websim's own: one id per resource, shared
by every URL variant that a conservative normaliser (RFC 3986 section 6) maps to the same URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from services.websim.robots import RobotsFile

DOMAIN = "sim.test"
_HOST_RE = re.compile(r"^h(\d{4})\." + re.escape(DOMAIN) + "$")
_CALENDAR_RE = re.compile(r"^/calendar/(\d{4})/(\d{2})$")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_STRAY_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def host_name(index: int) -> str:
    return f"h{index:04d}.{DOMAIN}"


def short_name(host: str) -> str:
    return host.split(".", 1)[0]


@dataclass(frozen=True)
class Link:
    """One <a href> as written in a page, and where websim meant it to lead.

    host/path are None for links that lead nowhere in the simulated web (mailto:, other schemes,
    foreign domains). `path` is the canonical path+query the href resolves to.
    """

    href: str
    host: str | None
    path: str | None
    nofollow: bool = False


@dataclass
class Page:
    pid: str
    host: str
    path: str  # canonical path+query
    kind: str  # "html", "pdf", "png" or "huge" (calendar months are CalendarPage, below)
    title: str
    paragraphs: list[str]
    links: list[Link] = field(default_factory=list)
    base_href: str | None = None
    canonical: str | None = None  # absolute URL
    noindex: bool = False
    nofollow: bool = False  # <meta name="robots" content="nofollow">
    malformed: bool = False
    charset: str = "utf-8"  # utf-8 | none | latin1 | wrong-header | wrong-meta
    slow_s: float = 0.0
    transient: tuple[int, int] | None = None  # (429 or 503, failures before success)
    dup_of: str | None = None  # pid of the page whose body this one repeats byte for byte
    near_of: str | None = None  # pid of the page this one nearly repeats
    hidden_hrefs: list[str] = field(default_factory=list)  # in comments/scripts: not links
    orphan: bool = False  # linked only from hidden_hrefs


@dataclass(frozen=True)
class Redirect:
    rid: str
    host: str
    path: str
    status: int  # 301 302 307 308
    location: str  # header value as sent (absolute or relative)
    target_host: str
    target_path: str


@dataclass(frozen=True)
class Gone:
    gid: str
    host: str
    path: str
    status: int = 410


@dataclass(frozen=True)
class CalendarPage:
    """A month of the infinite calendar trap; each links to the next month, forever."""

    host: str
    year: int
    month: int

    @property
    def pid(self) -> str:
        return f"{short_name(self.host)}/cal/{self.year:04d}-{self.month:02d}"

    @property
    def path(self) -> str:
        return f"/calendar/{self.year:04d}/{self.month:02d}"

    def next_path(self) -> str:
        y, m = (self.year + 1, 1) if self.month == 12 else (self.year, self.month + 1)
        return f"/calendar/{y:04d}/{m:02d}"


@dataclass(frozen=True)
class Special:
    """robots.txt, its redirect target, sitemap.xml: served, logged, never in the truth."""

    kind: str  # robots | sitemap
    host: str
    path: str


Resource = Page | Redirect | Gone | CalendarPage | Special


@dataclass
class Host:
    name: str
    index: int
    robots_kind: str  # see config.ROBOTS_KINDS
    robots: RobotsFile | None  # None: no rules served (404/500/unreachable)
    robots_text: bytes = b""
    robots_status: int = 200  # for kinds 404 and 500: the status served
    pages: dict[str, Page] = field(default_factory=dict)  # canonical path -> page
    redirects: dict[str, Redirect] = field(default_factory=dict)
    gone: dict[str, Gone] = field(default_factory=dict)
    trap_start: tuple[int, int] | None = None
    sitemap_paths: list[str] = field(default_factory=list)

    @property
    def short(self) -> str:
        return short_name(self.name)

    def resolve(self, path: str) -> Resource | None:
        """The resource at canonical path+query `path`, or None (404)."""
        found = self.pages.get(path) or self.redirects.get(path) or self.gone.get(path)
        if found is not None:
            return found
        if path == "/robots.txt" or (path == "/robots-real.txt" and self.robots_kind == "redirect"):
            return Special("robots", self.name, path)
        if path == "/sitemap.xml" and self.sitemap_paths:
            return Special("sitemap", self.name, path)
        if self.trap_start is not None:
            m = _CALENDAR_RE.match(path)
            if m and 1 <= int(m.group(2)) <= 12 and int(m.group(1)) >= 1:
                return CalendarPage(self.name, int(m.group(1)), int(m.group(2)))
        return None


@dataclass
class Web:
    hosts: dict[str, Host]
    by_id: dict[str, Page] = field(default_factory=dict)

    def host(self, name: str) -> Host | None:
        return self.hosts.get(name)

    def resolve(self, host: str, path: str) -> Resource | None:
        h = self.hosts.get(host)
        return None if h is None else h.resolve(path)

    def page(self, pid: str) -> Page | None:
        return self.by_id.get(pid)

    def all_pages(self) -> list[Page]:
        return [p for h in self.hosts.values() for p in h.pages.values()]


# --- locating a request or URL ------------------------------------------------------------------


def normalize_host(value: str) -> str:
    """Host header or URL authority -> lower-case name without port or trailing dot."""
    value = value.strip().lower()
    if value.startswith("["):  # IPv6 literal
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0].rstrip(".") if ":" in value else value.rstrip(".")


def _decode_unreserved(text: str) -> str:
    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    # A "%" that starts no escape is a literal percent sign: escape it first, or decoding a
    # later escape could complete it ("%3%30" -> "%30") and a second pass would change it again.
    return _PCT.sub(fix, _STRAY_PCT.sub("%25", text))


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    out: list[str] = []
    inp = path
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = "/" + inp[3:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = "/" + inp[4:]
            if out:
                out.pop()
        elif inp == "/..":
            inp = "/"
            if out:
                out.pop()
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            nxt = inp.find("/", start)
            seg, inp = (inp, "") if nxt == -1 else (inp[:nxt], inp[nxt:])
            out.append(seg)
    return "".join(out)


def origin_form(raw: str) -> str:
    """Request target -> path+query; an absolute-form target (proxy style) loses scheme and host."""
    if raw.lower().startswith(("http://", "https://")):
        rest = raw.split("://", 1)[1]
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    return raw or "/"


def canonical_target(raw: str) -> str:
    """Raw request target (origin form) -> the canonical path+query websim files resources under.

    The same conservative steps a good crawler applies: fragment dropped, dot segments removed,
    %xx of unreserved characters decoded, other escapes upper-cased, empty path -> "/". The query
    keeps its order.
    """
    raw = raw.split("#", 1)[0]
    path, sep, query = raw.partition("?")
    path = remove_dot_segments(_decode_unreserved(path)) or "/"
    if not path.startswith("/"):
        path = "/" + path
    return path + (sep + _decode_unreserved(query) if sep else "")


def locate(url: str) -> tuple[str, str] | None:
    """Absolute http URL -> (host, canonical path+query), or None outside the simulated web."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    if parts.scheme.lower() != "http" or not parts.netloc:
        return None
    host = normalize_host(parts.netloc.rsplit("@", 1)[-1])
    if not host.endswith("." + DOMAIN):
        return None
    target = parts.path + ("?" + parts.query if parts.query else "")
    return host, canonical_target(target)


def is_sim_host(host: str) -> bool:
    return _HOST_RE.match(host) is not None
