"""HTML parsing with selectolax (lexbor): links, base href, canonical, meta robots, nofollow, text.

Malformed HTML never raises: lexbor repairs it the way a browser does. Links come back resolved
and normalised; anything that does not normalise (javascript:, mailto:, garbage) is dropped.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser
from selectolax.lexbor import LexborNode as Node

from services.crawler.settings import ROBOTS_TOKEN
from services.crawler.urlnorm import InvalidURL, normalize

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_\-:.]+)""", re.I)
MAX_TEXT_CHARS = 20_000


@dataclass
class ParsedPage:
    links: list[str] = field(default_factory=list)
    nofollow_links: int = 0
    canonical: str | None = None
    noindex: bool = False
    nofollow: bool = False
    base: str = ""
    text: str = ""
    title: str = ""


def decode_body(body: bytes, header_charset: str | None) -> str:
    """Header charset, else a <meta charset> in the first 4 KiB, else UTF-8; undecodable bytes replaced."""
    for candidate in (header_charset, _sniff_meta_charset(body)):
        if candidate:
            try:
                codecs.lookup(candidate)
            except LookupError:
                continue
            return body.decode(candidate, errors="replace")
    return body.decode("utf-8", errors="replace")


def _sniff_meta_charset(body: bytes) -> str | None:
    m = _META_CHARSET.search(body[:4096])
    return m.group(1).decode("ascii", "ignore") if m else None


def _meta_robots(metas: list[Node]) -> set[str]:
    directives: set[str] = set()
    for node in metas:
        name = (node.attributes.get("name") or "").strip().lower()
        if name in ("robots", ROBOTS_TOKEN.lower()):
            content = node.attributes.get("content") or ""
            directives.update(d.strip().lower() for d in content.split(",") if d.strip())
    if "none" in directives:
        directives.update({"noindex", "nofollow"})
    return directives


# Every element parse_html reads, in one pass over the tree (document order), sorted by tag below.
_ONE_PASS = (
    "base[href], meta[name], link[rel][href], title, a[href], area[href], script, style, noscript, template"
)
_HIDDEN = frozenset(("script", "style", "noscript", "template"))


def parse_html(html: str, url: str, *, text: bool = True) -> ParsedPage:
    """The page's links, canonical, meta robots, title and (`text`: only when asked; nothing but a
    sink reads it) its visible text."""
    tree = LexborHTMLParser(html)
    page = ParsedPage(base=url)
    base_node = title = None
    metas: list[Node] = []
    links: list[Node] = []
    anchors: list[Node] = []
    hidden: list[Node] = []
    for node in tree.css(_ONE_PASS):
        tag = node.tag
        if tag == "a" or tag == "area":
            anchors.append(node)
        elif tag in _HIDDEN:
            hidden.append(node)
        elif tag == "meta":
            metas.append(node)
        elif tag == "link":
            links.append(node)
        elif tag == "title":
            if title is None:
                title = node
        elif tag == "base" and base_node is None:
            base_node = node
    if base_node is not None:
        try:
            page.base = normalize(base_node.attributes.get("href") or "", url)
        except InvalidURL:
            page.base = url
    directives = _meta_robots(metas)
    page.noindex = "noindex" in directives
    page.nofollow = "nofollow" in directives
    for node in links:
        rels = (node.attributes.get("rel") or "").lower().split()
        if "canonical" in rels:
            try:
                page.canonical = normalize(node.attributes.get("href") or "", page.base)
            except InvalidURL:
                pass
            break
    page.title = title.text(strip=True) if title is not None else ""
    if not page.nofollow:
        seen: set[str] = set()
        for node in anchors:
            attrs = node.attributes
            rel = attrs.get("rel")
            if rel and "nofollow" in rel.lower().split():
                page.nofollow_links += 1
                continue
            try:
                link = normalize(attrs.get("href") or "", page.base)
            except InvalidURL:
                continue
            if link not in seen:
                seen.add(link)
                page.links.append(link)
    if not text:
        return page
    for node in hidden:
        node.decompose()
    body = tree.body
    visible = body.text(separator=" ", strip=True) if body is not None else ""
    page.text = " ".join(visible.split())[:MAX_TEXT_CHARS]
    return page
