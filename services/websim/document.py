"""Response bodies: HTML pages (clean, malformed, huge), calendar months, sitemaps, PNG, PDF.

Pure functions of the generated data: the same page renders to the same bytes in any process.
Cosmetic choices (attribute quoting, meta spelling) come from a Random seeded by the page id.
"""

from __future__ import annotations

import html
import random
import re
import struct
import zlib
from collections.abc import Iterator

from services.websim.web import CalendarPage, Host, Link, Page, Web

_BARE_ATTR = re.compile(r"^[A-Za-z0-9/._~%#-]+$")

CHARSETS = {  # charset mode -> (Content-Type header, <meta charset>, body encoding)
    "utf-8": ("text/html; charset=utf-8", "utf-8", "utf-8"),
    "none": ("text/html", None, "utf-8"),
    "latin1": ("text/html; charset=iso-8859-1", "iso-8859-1", "latin-1"),
    "wrong-header": ("text/html; charset=utf-8", "utf-8", "latin-1"),  # body is not UTF-8
    "wrong-meta": ("text/html", "shift_jis", "utf-8"),  # meta lies, body is UTF-8
}


def content_type(page: Page) -> str:
    if page.kind == "pdf":
        return "application/pdf"
    if page.kind == "png":
        return "image/png"
    return CHARSETS[page.charset][0]


def _meta_robots(page: Page, rng: random.Random) -> str | None:
    words = [w for w, on in (("noindex", page.noindex), ("nofollow", page.nofollow)) if on]
    if not words:
        return None
    value = rng.choice([", ", ","]).join(words)
    return value.upper() if rng.random() < 0.3 else value


def _rel(link: Link, rng: random.Random) -> str | None:
    if not link.nofollow:
        return "noopener" if rng.random() < 0.05 else None
    return rng.choice(["nofollow", "nofollow", "nofollow noopener", "NoFollow", "external nofollow"])


def _anchor(link: Link) -> str:
    return html.escape(f"link to {link.path or link.href}")


def _clean(web: Web, page: Page, rng: random.Random, meta: str | None, links: list[Link]) -> list[str]:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>"]
    if meta:
        out.append(f'<meta charset="{meta}">')
    out.append(f"<title>{html.escape(page.title)}</title>")
    if page.base_href:
        out.append(f'<base href="{html.escape(page.base_href)}">')
    if page.canonical:
        out.append(f'<link rel="canonical" href="{html.escape(page.canonical)}">')
    robots = _meta_robots(page, rng)
    if robots:
        out.append(f'<meta name="robots" content="{robots}">')
    out += ["</head>", "<body>", f"<h1>{html.escape(page.title)}</h1>"]
    out += [f"<p>{html.escape(p)}</p>" for p in page.paragraphs]
    out.append("<ul>")
    for link in links:
        rel = _rel(link, rng)
        rel_attr = f' rel="{rel}"' if rel else ""
        out.append(f'<li><a href="{html.escape(link.href)}"{rel_attr}>{_anchor(link)}</a></li>')
    out.append("</ul>")
    out += _hidden(page)
    out += ["</body>", "</html>"]
    return out


def _hidden(page: Page) -> list[str]:
    # Links a browser would never follow from the markup: inside a comment and inside a script.
    out = []
    for href in page.hidden_hrefs:
        out.append(f'<!-- retired: <a href="{html.escape(href)}">old page</a> -->')
        out.append(f"<script>var tpl = '<a href=\"{href}\">old page</a>';</script>")
    return out


def _malformed(web: Web, page: Page, rng: random.Random, meta: str | None, links: list[Link]) -> list[str]:
    # Valid for an HTML5 parser (which recovers), ugly for anything stricter: upper-case tags,
    # unquoted and single-quoted attributes, unclosed elements, stray end tags, bare < and &.
    out = ["<HTML><HEAD>"]
    if meta:
        out.append(f"<META CHARSET={meta}>")
    out.append(f"<TITLE>{html.escape(page.title)}</title>")
    if page.base_href:
        out.append(f"<BASE HREF='{html.escape(page.base_href)}'>")
    if page.canonical:
        out.append(f"<link rel=canonical href='{html.escape(page.canonical)}'>")
    robots = _meta_robots(page, rng)
    if robots:
        out.append(f"<META NAME=ROBOTS CONTENT='{robots}'>")
    out.append("<body><div class=main><table><tr><td>")
    for p in page.paragraphs:
        out.append(f"<p>{html.escape(p)} 3 < 4 && 5 > 2")
    out.append("</b></span><ul>")
    for i, link in enumerate(links):
        href = html.escape(link.href)
        if i % 3 == 0 and _BARE_ATTR.match(link.href):
            quoted = href
        else:
            quoted = f"'{href}'" if i % 3 == 1 else f'"{href}"'
        rel = _rel(link, rng)
        rel_attr = f" REL='{rel}'" if rel else ""
        tag = "A HREF" if i % 2 else "a\n   href"
        out.append(f"<li><{tag}={quoted}{rel_attr}>{_anchor(link)}</A>")
    out += _hidden(page)
    out.append("</div></td>")
    return out


def render_page(web: Web, page: Page) -> bytes:
    """Body of a non-huge page (HTML, PDF or PNG)."""
    if page.dup_of is not None:
        original = web.page(page.dup_of)
        assert original is not None
        return render_page(web, original)  # byte for byte the same
    if page.kind == "png":
        return _png(page.pid)
    if page.kind == "pdf":
        return _pdf(page.title)
    return _html_bytes(web, page)


def _html_bytes(web: Web, page: Page, extra: str = "") -> bytes:
    rng = random.Random(page.pid if page.near_of is None else page.near_of)
    _, meta, encoding = CHARSETS[page.charset]
    build = _malformed if page.malformed else _clean
    lines = build(web, page, rng, meta, page.links)
    if extra:
        lines.insert(-2, extra)
    return ("\n".join(lines) + "\n").encode(encoding, errors="xmlcharrefreplace")


def huge_body(web: Web, page: Page, size: int) -> Iterator[bytes]:
    """A page of exactly `size` bytes: head and every link in the first few KiB, filler after."""
    head = _html_bytes(web, page, extra="<div class=filler>")
    tail = b"</div></body></html>\n"
    yield head
    block = b"<p>" + b"filler " * 140 + b"</p>\n"
    remaining = size - len(head) - len(tail)
    while remaining > 0:
        chunk = (block * 64)[: min(remaining, 64 * 1024)]
        remaining -= len(chunk)
        yield chunk
    yield tail


def huge_length(web: Web, page: Page, size: int) -> int:
    head = _html_bytes(web, page, extra="<div class=filler>")
    return max(size, len(head) + len(b"</div></body></html>\n"))


def render_calendar(cal: CalendarPage) -> bytes:
    title = f"Calendar {cal.year:04d}-{cal.month:02d}"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>\n'
        f"<body><h1>{title}</h1>\n<p>No events this month.</p>\n"
        f'<a href="{cal.next_path()}">next month</a>\n<a href="/">home</a>\n</body></html>\n'
    ).encode()


def render_sitemap(host: Host) -> bytes:
    urls = "".join(
        f"  <url><loc>http://{host.name}{html.escape(p)}</loc></url>\n" for p in host.sitemap_paths
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n' + urls + "</urlset>\n"
    ).encode()


def _png(text: str) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00\x20\x80\xc0", 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"tEXt", b"Comment\x00" + text.encode())
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


def _pdf(title: str) -> bytes:
    safe = title.encode("ascii", "replace").decode().replace("(", "[").replace(")", "]")
    stream = f"BT /F1 12 Tf 20 100 Td ({safe}) Tj ET".encode()
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 144] /Contents 4 0 R >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = b"%PDF-1.4\n"
    offsets = []
    for i, obj in enumerate(objs, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + obj + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out
