"""Builds the simulated web from a SimConfig: hosts, pages, link graph, redirects, robots rules.

Every random choice comes from a `random.Random` seeded by a string naming (config fingerprint,
stage, host): string seeds hash through SHA-512 in CPython, so the same config gives the same web
in every process, whatever PYTHONHASHSEED is.

Every href written into a page is checked here against where it was meant to lead: it is joined
with the page's base URL by `urllib.parse.urljoin` and located with `web.locate`. A generator bug
that made an href lead somewhere else would fail loudly instead of silently skewing the truth.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from urllib.parse import urljoin

from services.websim.config import DEFAULT_USER_AGENT, ROBOTS_PARSE_LIMIT, SimConfig
from services.websim.robots import Group, RobotsFile, Rule
from services.websim.web import (
    DOMAIN,
    Gone,
    Host,
    Link,
    Page,
    Redirect,
    Web,
    host_name,
    locate,
)

# fmt: off
WORDS = [
    "apple", "amber", "atlas", "anchor", "basil", "birch", "canyon", "cedar", "delta", "ember",
    "falcon", "garnet", "harbor", "iris", "jasper", "kestrel", "lantern", "maple", "nectar", "onyx",
    "pebble", "quartz", "raven", "saffron", "timber", "umber", "violet", "willow", "yarrow", "zephyr",
    # non-ASCII words make charset mistakes visible in the text
    "café", "naïve", "Zürich", "façade", "crème", "jalapeño", "smörgåsbord",
]
# fmt: on

# Sections of a site: (name, weight). The path shapes are in _page_path.
SECTIONS = (
    ("p", 40),
    ("blog", 12),
    ("drafts", 3),
    ("private", 8),
    ("tmp", 5),
    ("ties", 4),
    ("docs", 5),
    ("img", 4),
    ("search", 5),
    ("shop", 6),
)

# Robots rule sets the generator draws from; each exercises one part of RFC 9309 matching.
RULE_MENU: dict[str, tuple[Rule, ...]] = {
    "private": (Rule(False, "/private/"), Rule(True, "/private/open-")),  # longer Allow wins
    "pdf": (Rule(False, "/*.pdf$"),),  # * and $: /docs/x.pdf?v=2 stays allowed
    "tmp": (Rule(False, "/tmp/"),),
    "search": (Rule(False, "/search"),),
    "query": (Rule(False, "/*?"),),
    "ties": (Rule(False, "/ties/"), Rule(True, "/ties/")),  # equal length: Allow wins
    "drafts": (Rule(False, "/blog/*/drafts/"),),
    "shopdir": (Rule(False, "/shop/*/$"),),
    "pct": (Rule(False, "/p/%61"),),  # %61 is "a": matches /p/apple-3.html
    "print": (Rule(False, "/*-print.html$"),),
    "img": (Rule(False, "/img/"), Rule(True, "/img/*.png$")),
    "empty": (Rule(False, ""),),  # "Disallow:" with no path: no rule at all
    "only": (Rule(False, "/"), Rule(True, "/$"), Rule(True, "/p/"), Rule(True, "/blog/")),
}
_MENU_WEIGHTS = {"only": 1, "empty": 2}
OTHER_BOT = "OtherBot"


def _rng(cfg: SimConfig, *parts: object) -> random.Random:
    return random.Random(":".join(["websim", cfg.fingerprint(), *map(str, parts)]))


def powerlaw_int(rng: random.Random, lo: int, hi: int, alpha: float) -> int:
    """An integer in [lo, hi] with P(k) proportional to k ** -alpha."""
    ks = list(range(lo, hi + 1))
    return rng.choices(ks, weights=[k**-alpha for k in ks])[0]


def _url(host: str, path: str) -> str:
    return f"http://{host}{path}"


def relative_ref(base_path: str, target: str) -> str:
    """A relative reference from a document at base_path to target path+query (RFC 3986 5.2)."""
    tpath, sep, query = target.partition("?")
    base_dirs = [s for s in base_path.rsplit("/", 1)[0].split("/") if s]
    tdir, tname = tpath.rsplit("/", 1)
    tdirs = [s for s in tdir.split("/") if s]
    common = 0
    while common < min(len(base_dirs), len(tdirs)) and base_dirs[common] == tdirs[common]:
        common += 1
    rel = "../" * (len(base_dirs) - common) + "".join(d + "/" for d in tdirs[common:]) + tname
    if not rel or ":" in rel.split("/", 1)[0]:
        rel = "./" + rel
    return rel + (sep + query if sep else "")


def _case_variant(rng: random.Random, host: str) -> str:
    flipped = "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c for c in host)
    return flipped if flipped != host else host.upper()


def _pct_variant(rng: random.Random, path: str) -> str:
    tpath, sep, query = path.partition("?")
    spots = [i for i, c in enumerate(tpath) if c.isascii() and c.isalnum()]
    if not spots:
        return path
    i = rng.choice(spots)
    code = f"%{ord(tpath[i]):02X}"
    code = code.lower() if rng.random() < 0.3 else code
    return tpath[:i] + code + tpath[i + 1 :] + (sep + query if sep else "")


def _dots_variant(rng: random.Random, path: str) -> str:
    tpath, sep, query = path.partition("?")
    segs = tpath.split("/")  # leading "" for the root
    at = rng.randrange(1, len(segs))
    # "%2e%2e" is a ".." segment once its escapes are decoded (RFC 3986 6.2.2): a crawler that
    # removes dot segments before decoding requests "/zz/../p", which the server resolves to "/p",
    # and robots.txt rules for "/p" must catch it (the judge decodes first, then removes dots).
    insert = rng.choice([["."], ["zz", "%2e%2e"], [".", "x", ".."]])
    return "/".join(segs[:at] + insert + segs[at:]) + (sep + query if sep else "")


class _Builder:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.hosts: dict[str, Host] = {}
        self.main: dict[str, list[Page]] = {}  # per host: pages in the link tree, in order

    # -- pass 0: host-level variety -----------------------------------------------------------

    def assign_kinds(self) -> tuple[dict[int, str], set[int]]:
        cfg = self.cfg
        rng = _rng(cfg, "kinds")
        others = list(range(1, cfg.hosts))
        rng.shuffle(others)
        kinds: dict[int, str] = {}
        pos = 0
        for kind, share in sorted(cfg.robots_mix.items()):
            count = round(share * cfg.hosts)
            if share > 0 and cfg.hosts >= 10:
                count = max(1, count)
            for idx in others[pos : pos + count]:
                kinds[idx] = kind
            pos += count
        trap_count = round(cfg.trap_rate * cfg.hosts)
        if cfg.trap_rate > 0 and cfg.hosts >= 10:
            trap_count = max(1, trap_count)
        # Traps go on hosts whose robots let a crawler in, or they would test nothing.
        open_hosts = [i for i in range(1, cfg.hosts) if kinds.get(i, "normal") in ("normal", "404", "slow")]
        traps = set(_rng(cfg, "traps").sample(open_hosts, min(trap_count, len(open_hosts))))
        return kinds, traps

    # -- pass 1: pages ---------------------------------------------------------------------------

    def _page_path(self, rng: random.Random, section: str, k: int) -> tuple[str, str]:
        word = rng.choice(WORDS[:30])
        slug = f"{word}-{k}"
        match section:
            case "p":
                return f"/p/{slug}.html", "html"
            case "blog":
                return f"/blog/{rng.choice([2024, 2025, 2026])}/{slug}.html", "html"
            case "drafts":
                return f"/blog/{rng.choice([2025, 2026])}/drafts/{slug}.html", "html"
            case "private":
                pre = "open-" if rng.random() < 0.5 else ""
                return f"/private/{pre}{slug}.html", "html"
            case "tmp":
                return f"/tmp/{slug}.html", "html"
            case "ties":
                return f"/ties/{slug}.html", "html"
            case "docs":
                return f"/docs/{slug}.pdf" + ("?v=2" if rng.random() < 0.3 else ""), "pdf"
            case "img":
                return f"/img/{slug}.png", "png"
            case "search":
                extra = f"&page={rng.randint(2, 9)}" if rng.random() < 0.5 else ""
                return f"/search?q={word}{k}{extra}", "html"
            case _:
                return (f"/shop/{slug}/", "html") if rng.random() < 0.5 else (f"/shop/item-{k}.html", "html")

    def _text(self, rng: random.Random) -> list[str]:
        return [
            " ".join(rng.choices(WORDS, k=rng.randint(25, 50))).capitalize() + "."
            for _ in range(rng.randint(3, 5))
        ]

    def build_pages(self, idx: int, trap: bool) -> Host:
        cfg = self.cfg
        name = host_name(idx)
        rng = _rng(cfg, "pages", idx)
        host = Host(name=name, index=idx, robots_kind="normal", robots=None)
        short = host.short
        n = powerlaw_int(rng, cfg.min_pages, cfg.max_pages, cfg.page_alpha)
        main: list[Page] = []

        def add(path: str, kind: str, **kw: object) -> Page:
            pid = f"{short}/p{len(host.pages)}"
            title = f"{rng.choice(WORDS).capitalize()} {rng.choice(WORDS)} {len(host.pages)}"
            page = Page(pid=pid, host=name, path=path, kind=kind, title=title, paragraphs=self._text(rng))
            for key, value in kw.items():
                setattr(page, key, value)
            host.pages[path] = page
            return page

        main.append(add("/", "html"))
        section_names = [s for s, _ in SECTIONS]
        weights = [w for _, w in SECTIONS]
        for k in range(1, n):
            path, kind = self._page_path(rng, rng.choices(section_names, weights)[0], k)
            if path in host.pages:
                continue
            main.append(add(path, kind))
        ex = cfg.exotic_rate
        for page in main[1:]:
            if page.kind == "html":
                page.malformed = rng.random() < ex
                if rng.random() < 2 * ex:
                    page.charset = rng.choice(["none", "latin1", "wrong-header", "wrong-meta"])
                if rng.random() < 1.5 * ex:
                    page.base_href = rng.choice(["/blog/2025/", f"http://{name}/p/", f"http://{name}/"])
                page.noindex = rng.random() < ex
                page.nofollow = rng.random() < 0.8 * ex
                if rng.random() < cfg.huge_page_rate:
                    page.kind = "huge"
            if rng.random() < cfg.transient_rate:
                page.transient = (rng.choice([429, 503]), rng.choice([1, 2]))
        for page in main:
            if rng.random() < cfg.slow_page_rate:
                page.slow_s = round(rng.uniform(0.05, cfg.slow_page_max_s), 3)
        # Exact and near duplicates sit in their original's directory, so every relative href in
        # the shared body resolves the same from both URLs.
        for page in list(main[1:]):
            if page.kind != "html" or not page.path.endswith(".html"):
                continue
            if rng.random() < 1.2 * ex:
                add(page.path[:-5] + "-print.html", "html", dup_of=page.pid)
            if rng.random() < ex:
                near = add(page.path[:-5] + "-v2.html", "html", near_of=page.pid)
                near.title = page.title
                near.paragraphs = list(page.paragraphs)
                i = rng.randrange(len(near.paragraphs))
                words = near.paragraphs[i].split()
                for _ in range(3):
                    words[rng.randrange(len(words))] = rng.choice(WORDS)
                near.paragraphs[i] = " ".join(words)
                main.append(near)
        if rng.random() < 0.3:
            add(f"/orphan/{rng.choice(WORDS[:30])}-{idx}.html", "html", orphan=True)
        if trap:
            host.trap_start = (2026, rng.randint(1, 12))
        self.hosts[name] = host
        self.main[name] = main
        return host

    # -- pass 2: links, redirects ----------------------------------------------------------------

    def _base_url(self, page: Page) -> str:
        own = _url(page.host, page.path)
        return urljoin(own, page.base_href) if page.base_href else own

    def make_link(self, rng: random.Random, src: Page, host: str, path: str, nofollow: bool = False) -> Link:
        base = self._base_url(src)
        base_host = locate(base)
        same = base_host is not None and base_host[0] == host
        styles = ["abs", "case", "port80", "proto", "frag_abs"]
        weights = [50, 15, 15, 10, 10]
        if same:
            styles += ["root", "rel", "frag", "dots", "pct"]
            weights = [12, 5, 5, 3, 3, 35, 20, 7, 5, 5]
        style = rng.choices(styles, weights)[0]
        frag = f"#{rng.choice(WORDS[:30])}"
        match style:
            case "abs":
                href = _url(host, path)
            case "case":
                href = _url(_case_variant(rng, host), path)
            case "port80":
                href = f"http://{host}:80{path}"
            case "proto":
                href = f"//{host}{path}"
            case "frag_abs":
                href = _url(host, path) + frag
            case "root":
                href = path
            case "rel":
                href = relative_ref(urljoin(base, "x").split(host, 1)[-1], path)
            case "frag":
                href = path + frag
            case "dots":
                href = _dots_variant(rng, path)
            case _:
                href = _pct_variant(rng, path)
        if locate(urljoin(base, href)) != (host, path):
            raise AssertionError(f"generator bug: {href!r} from {base} does not lead to {host}{path}")
        return Link(href=href, host=host, path=path, nofollow=nofollow)

    def build_links(self, host: Host) -> None:
        cfg = self.cfg
        rng = _rng(cfg, "links", host.index)
        name = host.name
        main = self.main[name]
        linkers = [p for p in main if p.kind in ("html", "huge") and p.dup_of is None and p.near_of is None]
        redirect_entries = self._build_redirects(rng, host, main)
        for k in range(rng.randint(0, 2) if rng.random() < 2 * cfg.exotic_rate else 0):
            gone = Gone(gid=f"{host.short}/g{k}", host=name, path=f"/gone/{rng.choice(WORDS[:30])}-{k}.html")
            host.gone[gone.path] = gone
        # A spanning tree first, so every main page is reachable from "/" (robots permitting).
        for i, page in enumerate(main[1:], start=1):
            parents = [p for p in linkers[:] if main.index(p) < i] or [main[0]]
            parent = rng.choice(parents)
            parent.links.append(self.make_link(rng, parent, name, page.path))
        for page in linkers:
            degree = powerlaw_int(rng, 1, cfg.max_out_links, cfg.link_alpha)
            for _ in range(degree):
                page.links.append(self._extra_link(rng, host, page, redirect_entries))
        home = main[0]
        for _ in range(rng.randint(1, 3)):
            other = host_name(rng.randrange(cfg.hosts))
            home.links.append(self.make_link(rng, home, other, "/"))
        if host.trap_start is not None:
            y, m = host.trap_start
            home.links.append(self.make_link(rng, home, name, f"/calendar/{y:04d}/{m:02d}"))
        for entry in redirect_entries:
            src = rng.choice(linkers)
            src.links.append(self.make_link(rng, src, name, entry))
        for gone in host.gone.values():
            src = rng.choice(linkers)
            src.links.append(self.make_link(rng, src, name, gone.path))
        for page in list(host.pages.values()):
            if page.dup_of is not None:
                original = next(p for p in main if p.pid == page.dup_of)
                original.links.append(self.make_link(rng, original, name, page.path))
        for page in host.pages.values():
            if page.orphan:
                carrier = rng.choice(linkers)
                carrier.hidden_hrefs.append(page.path)
        # Clones share their original's links (and, for exact duplicates, its whole body).
        by_id = {p.pid: p for p in host.pages.values()}
        for page in host.pages.values():
            if page.dup_of is not None or page.near_of is not None:
                original = by_id[page.dup_of or page.near_of or ""]
                page.links = original.links
                for attr in ("base_href", "charset", "malformed", "noindex", "nofollow"):
                    setattr(page, attr, getattr(original, attr))
        for page in host.pages.values():
            if page.kind in ("html", "huge") and not page.orphan:
                original = by_id.get(page.dup_of or page.near_of or page.pid, page)
                page.canonical = _url(name, original.path)
        if rng.random() < 0.5:
            pool = [p.path for p in main if p.kind == "html"]
            host.sitemap_paths = rng.sample(pool, min(10, len(pool)))

    def _extra_link(self, rng: random.Random, host: Host, src: Page, entries: list[str]) -> Link:
        cfg = self.cfg
        nofollow = rng.random() < cfg.nofollow_link_rate
        r = rng.random()
        if r < cfg.cross_host_link_rate:
            if rng.random() < 0.03:  # a *.sim.test host that does not exist: 404 everywhere
                return self.make_link(rng, src, host_name(cfg.hosts + rng.randrange(50)), "/", nofollow)
            other = self.hosts.get(host_name(rng.randrange(cfg.hosts)))
            if other is None or rng.random() < 0.5:
                target = host_name(rng.randrange(cfg.hosts))
                return self.make_link(rng, src, target, "/", nofollow)
            page = rng.choice(self.main[other.name])
            return self.make_link(rng, src, other.name, page.path, nofollow)
        r = rng.random()
        if r < 0.03:
            href = rng.choice(
                [
                    "mailto:web@example.org",
                    "javascript:void(0)",
                    "https://example.org/",
                    "ftp://files.example.org/x",
                    "tel:+15550100",
                ]
            )
            return Link(href=href, host=None, path=None, nofollow=nofollow)
        if r < 0.06:
            return self.make_link(rng, src, host.name, f"/missing/{rng.choice(WORDS[:30])}.html", nofollow)
        if r < 0.12 and entries:
            return self.make_link(rng, src, host.name, rng.choice(entries), nofollow)
        page = rng.choice(self.main[host.name])
        return self.make_link(rng, src, host.name, page.path, nofollow)

    def _build_redirects(self, rng: random.Random, host: Host, main: list[Page]) -> list[str]:
        """Redirect entries; returns the paths links should point at (chain starts)."""
        cfg = self.cfg
        name = host.name
        targets = [p.path for p in main]
        entries: list[str] = []
        count = sum(rng.random() < cfg.redirect_rate for _ in main)
        serial = 0

        def add(path: str, target_host: str, target_path: str) -> None:
            nonlocal serial
            status = rng.choice([301, 302, 307, 308])
            style = rng.random()
            if target_host != name or style < 0.4:
                location = _url(target_host, target_path)
            elif style < 0.85:
                location = target_path
            else:
                location = relative_ref(path, target_path)
            assert locate(urljoin(_url(name, path), location)) == (target_host, target_path)
            host.redirects[path] = Redirect(
                f"{host.short}/r{serial}", name, path, status, location, target_host, target_path
            )
            serial += 1

        def chain(prefix: str, length: int, final: tuple[str, str]) -> None:
            hops = [f"{prefix}/{i}" for i in range(1, length + 1)]
            for a, b in itertools.pairwise(hops):
                add(a, name, b)
            add(hops[-1], *final)
            entries.append(hops[0])

        for k in range(count):
            kind = rng.choices(["one", "chain", "loop", "cross"], [60, 20, 10, 10])[0]
            if kind == "one":
                path = f"/old/{rng.choice(WORDS[:30])}-{k}.html"
                add(path, name, rng.choice(targets))
                entries.append(path)
            elif kind == "chain":
                chain(f"/go/{k}", rng.choice([2, 3]), (name, rng.choice(targets)))
            elif kind == "loop":
                a, b = f"/loop/{k}/a", f"/loop/{k}/b"
                add(a, name, b)
                add(b, name, a)
                entries.append(a)
            else:
                other = self.hosts.get(host_name(rng.randrange(cfg.hosts)))
                if other is not None:
                    path = f"/out/{k}"
                    add(path, other.name, rng.choice(self.main[other.name]).path)
                    entries.append(path)
        if rng.random() < 0.1:
            # Exactly at and one past the usual limit of 5 redirects.
            chain("/hop5", 5, (name, rng.choice(targets)))
            chain("/hop6", 6, (name, rng.choice(targets)))
        if rng.random() < 0.05:
            add("/loop/self", name, "/loop/self")
            entries.append("/loop/self")
        return entries

    # -- robots ------------------------------------------------------------------------------------

    def build_robots(self, host: Host, kind: str) -> None:
        cfg = self.cfg
        rng = _rng(cfg, "robots", host.index)
        host.robots_kind = kind
        if kind == "404":
            host.robots_status = rng.choice([404, 404, 404, 410, 403])
            return
        if kind == "500":
            host.robots_status = rng.choice([500, 503, 502])
            return
        if kind == "unreachable":
            host.robots_status = 0
            return
        menu = [m for m in RULE_MENU if m != "calendar"]
        weights = [_MENU_WEIGHTS.get(m, 6) for m in menu]

        def pick() -> tuple[Rule, ...]:
            names = {rng.choices(menu, weights)[0] for _ in range(rng.randint(1, 3))}
            if host.trap_start is not None and rng.random() < 0.5:
                names.add("calendar_rule")
            rules: list[Rule] = []
            for n in sorted(names):
                rules.extend(RULE_MENU[n] if n != "calendar_rule" else (Rule(False, "/calendar/"),))
            return tuple(rules)

        has_pgb = rng.random() < 0.65
        has_star = rng.random() < (0.9 if has_pgb else 0.97)
        delay = (
            round(rng.uniform(cfg.crawl_delay_min, cfg.crawl_delay_max), 2)
            if rng.random() < cfg.crawl_delay_rate
            else None
        )
        decoy = 1.0 if rng.random() < 0.3 else None  # a delay in a group that does not apply
        groups: list[Group] = []
        if rng.random() < 0.7:
            groups.append(Group((OTHER_BOT,), (Rule(False, "/"),), 5.0 if rng.random() < 0.3 else None))
        pgb_rules = pick() if has_pgb else ()
        if has_pgb or (delay is not None and not has_star):
            agents: tuple[str, ...] = (DEFAULT_USER_AGENT,)
            if rng.random() < 0.15:
                agents = ("SomeOtherBot", DEFAULT_USER_AGENT)
            if len(pgb_rules) >= 2 and rng.random() < 0.2:
                # The same agent in two groups: RFC 9309 says combine them.
                half = len(pgb_rules) // 2
                groups.append(Group(agents, pgb_rules[:half], delay))
                # A group with no line of its own would merge into the next one (RFC 9309 2.1).
                filler = Group((OTHER_BOT,), (Rule(False, "/"),))
                groups.append(Group(("*",), pick(), decoy) if has_star else filler)
                groups.append(Group(agents, pgb_rules[half:], None))
                has_star = False
            else:
                groups.append(Group(agents, pgb_rules, delay))
                if has_star:
                    groups.append(Group(("*",), pick(), decoy))
        elif has_star:
            groups.append(Group(("*",), pick(), delay))
        sitemaps: list[str] = []
        if host.sitemap_paths:
            sitemaps.append(f"http://{host.name}/sitemap.xml")
            if rng.random() < 0.2:
                sitemaps.append(f"http://{host.name}/sitemap-missing.xml")
        rng.shuffle(groups) if rng.random() < 0.3 else None
        host.robots = RobotsFile(tuple(groups), tuple(sitemaps))
        text = self._render_robots(rng, host)
        if kind == "huge":
            text += self._padding(len(text.encode()))
        host.robots_text = text.encode()

    def _render_robots(self, rng: random.Random, host: Host) -> str:
        assert host.robots is not None
        eol = "\r\n" if rng.random() < 0.1 else "\n"

        def key(word: str) -> str:
            return rng.choice([word, word.lower(), word.upper()]) if rng.random() < 0.2 else word

        def sep() -> str:
            return rng.choice([":", " : ", ":  "]) if rng.random() < 0.15 else ": "

        def agent(a: str) -> str:
            if a == DEFAULT_USER_AGENT and rng.random() < 0.3:
                return rng.choice([a.lower(), a.upper()])
            return a

        out = [f"# robots.txt for {host.name}", ""]
        sitemap_lines = [f"{key('Sitemap')}{sep()}{s}" for s in host.robots.sitemaps]
        top = rng.random() < 0.4
        if top:
            out += [*sitemap_lines, ""]
        for group in host.robots.groups:
            out += [f"{key('User-agent')}{sep()}{agent(a)}" for a in group.agents]
            for rule in group.rules:
                word = "Allow" if rule.allow else "Disallow"
                comment = "  # see policy" if rng.random() < 0.1 else ""
                out.append(f"{key(word)}{sep()}{rule.path}{comment}")
            if group.crawl_delay is not None:
                out.append(f"{key('Crawl-delay')}{sep()}{group.crawl_delay:g}")
            out.append("")
        if not top:
            out += sitemap_lines
        return eol.join(out) + eol

    def _padding(self, have: int) -> str:
        # Neutral filler: comments and lines without a colon, which RFC 9309 parsers ignore. The
        # rules all come first, so a crawler parsing only the first 500 KiB (the RFC minimum) and
        # one parsing everything reach the same rules.
        lines = []
        size = have
        n = 0
        while size < self.cfg.robots_huge_bytes:
            line = f"# padding {n:07d} " + "x" * 80 + "\n" if n % 7 else "lorem ipsum dolor sit amet\n"
            lines.append(line)
            size += len(line)
            n += 1
        assert have < ROBOTS_PARSE_LIMIT
        return "".join(lines)


def generate(cfg: SimConfig) -> Web:
    """The whole web for `cfg`; deterministic."""
    b = _Builder(cfg)
    kinds, traps = b.assign_kinds()
    for idx in range(cfg.hosts):
        b.build_pages(idx, idx in traps)
    _ensure_features(cfg, b)
    for host in b.hosts.values():
        b.build_links(host)
    for host in b.hosts.values():
        b.build_robots(host, kinds.get(host.index, "normal"))
    web = Web(hosts=b.hosts)
    _add_dot_segment_baits(web)
    web.by_id = {p.pid: p for p in web.all_pages()}
    return web


def _add_dot_segment_baits(web: Web) -> None:
    """On each host whose robots.txt disallows a page by its path, the home page links to that
    page through an escaped dot segment: "/zz/%2e%2e/private/p.html". The server resolves it to
    the disallowed page; a crawler that removes dot segments before decoding the escapes checks
    robots.txt against "/zz/../private/p.html", which no rule matches, and so gets caught by
    the judge. Deterministic and drawn from no random stream, so the rest of the web is as it was.
    """
    from services.websim import truth

    for host in web.hosts.values():
        home = host.pages.get("/")
        if not isinstance(truth.robots_for(host), RobotsFile) or home is None or home.nofollow:
            continue
        base = urljoin(_url(host.name, home.path), home.base_href or "")
        for page in sorted(host.pages.values(), key=lambda p: p.path):
            path = page.path
            href = f"/zz/%2e%2e{path}"
            if (
                page.kind == "html"
                and not truth.allowed(web, host.name, path)
                and truth.allowed(web, host.name, f"/zz/..{path}")
                and locate(urljoin(base, href)) == (host.name, path)
            ):
                home.links.append(Link(href=href, host=host.name, path=path))
                break


def _charset_feature(charset: str) -> tuple[Callable[[Page], bool], Callable[[Page], None]]:
    """(has it, give it) for one charset variant."""

    def has(p: Page) -> bool:
        return p.charset == charset

    def give(p: Page) -> None:
        p.charset = charset

    return has, give


def _ensure_features(cfg: SimConfig, b: _Builder) -> None:
    """On sites of 60+ pages, make sure every page feature occurs at least once."""
    rng = _rng(cfg, "ensure")
    pool = [
        p
        for h in b.main.values()
        for p in h[1:]
        if p.kind == "html" and p.dup_of is None and p.near_of is None and not p.path.endswith("-print.html")
    ]
    if len(pool) < 60:
        return
    features = {
        "huge": (lambda p: p.kind == "huge", lambda p: setattr(p, "kind", "huge")),
        "malformed": (lambda p: p.malformed, lambda p: setattr(p, "malformed", True)),
        "transient": (lambda p: p.transient is not None, lambda p: setattr(p, "transient", (503, 1))),
        "slow": (lambda p: p.slow_s > 0, lambda p: setattr(p, "slow_s", 0.2)),
        "noindex": (lambda p: p.noindex, lambda p: setattr(p, "noindex", True)),
        "nofollow": (lambda p: p.nofollow, lambda p: setattr(p, "nofollow", True)),
        "base": (lambda p: p.base_href is not None, lambda p: setattr(p, "base_href", "/blog/2025/")),
    }
    for charset in ("none", "latin1", "wrong-header", "wrong-meta"):
        features[charset] = _charset_feature(charset)
    everything = [p for h in b.main.values() for p in h]
    for _name, (has, give) in features.items():
        if not any(has(p) for p in everything):
            give(rng.choice(pool))


__all__ = ["DOMAIN", "generate", "powerlaw_int", "relative_ref"]
