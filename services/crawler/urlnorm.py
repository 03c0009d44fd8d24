"""Conservative URL normalisation (RFC 3986 section 6.2.2 and 6.2.3, plus IDNA hosts).

What it does, and nothing more:
- resolves a reference against a base (RFC 3986 section 5) and removes dot segments, after
  decoding escapes of unreserved characters, so "%2e%2e" is a ".." segment (section 6.2.2);
- lower-cases the scheme and the host, converts an internationalised host to its IDNA A-label;
- drops the default port (80 for http, 443 for https) and the fragment;
- an empty path becomes "/";
- percent-encoding: escapes of unreserved characters (ALPHA DIGIT - . _ ~) are decoded, every other
  escape is upper-cased, and characters that may not appear raw (space, non-ASCII, quotes...) are
  UTF-8 percent-encoded as a browser would before sending them; a stray "%" becomes %25.

What it deliberately does not do, because each can merge distinct resources: sort or drop query
parameters, add or remove trailing slashes, decode reserved escapes such as %2F, strip "www.".
The request target the server receives for a normalised URL decodes to the same bytes as for the
original, segment by segment (tests/services/crawler/test_urlnorm.py proves it with hypothesis).
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit, urlunsplit

import idna

DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters that may stay raw in a path or query: unreserved, sub-delims, ":" "@" "/" "?" and "%"
# (the latter only as the start of an escape, handled separately).
_PATH_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/")
_QUERY_SAFE = _PATH_SAFE | frozenset(b"?")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_MAX_URL_LENGTH = 4096


class InvalidURL(ValueError):
    """Raised when a string cannot be turned into a crawlable http(s) URL."""


def _normalise_escapes(part: str, safe: frozenset[int]) -> str:
    """Decode escapes of unreserved bytes, upper-case the rest, escape what may not appear raw."""
    raw = part.encode("utf-8", "surrogatepass")
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25 and i + 2 < n and raw[i + 1] in _HEX and raw[i + 2] in _HEX:  # "%XX"
            value = int(raw[i + 1 : i + 3], 16)
            if value in _UNRESERVED:
                out.append(value)
            else:
                out += b"%" + raw[i + 1 : i + 3].upper()
            i += 3
            continue
        if b in safe:
            out.append(b)
        else:
            # Includes a stray "%" (not followed by two hex digits): as %25 it decodes to the same
            # byte, and it can never fuse with what follows into a new escape ("%a%41" -> "%aA"
            # would be a different URL; "%25aA" is not).
            out += b"%%%02X" % b
        i += 1
    return out.decode("ascii")


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, written out so that it works on already-absolute paths too."""
    output: list[str] = []
    inp = path
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./") or inp.startswith("/./"):
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = inp[3:]
            if output:
                output.pop()
        elif inp == "/..":
            inp = "/"
            if output:
                output.pop()
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            cut = inp.find("/", start)
            if cut == -1:
                cut = len(inp)
            output.append(inp[:cut])
            inp = inp[cut:]
    return "".join(output)


def _normalise_host(host: str) -> str:
    if not host:
        raise InvalidURL("URL has no host")
    host = host.lower()
    if "%" in host:
        # Percent-encoded reg-names are legal (RFC 3986 3.2.2) but unusual; decode unreserved only.
        host = _normalise_escapes(host, frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-._~")).lower()
    if host.isascii():
        if not re.fullmatch(r"[a-z0-9._~!$&'()*+,;=-]+", host):
            raise InvalidURL(f"invalid host {host!r}")
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidURL(f"invalid internationalised host {host!r}: {exc}") from None


def normalize(url: str, base: str | None = None) -> str:
    """Return the normalised absolute form of `url` (resolved against `base`), or raise InvalidURL."""
    url = url.strip(" \t\r\n\x0c")
    # Browsers drop tabs and newlines anywhere in a URL (WHATWG URL parser); do the same.
    url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    if base is not None:
        url = urljoin(base, url)
    if len(url) > _MAX_URL_LENGTH:
        raise InvalidURL(f"URL longer than {_MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidURL(f"unsupported scheme {scheme!r}")
    hostname = parts.hostname or ""
    host = f"[{hostname.lower()}]" if ":" in hostname else _normalise_host(hostname)
    netloc = host
    if parts.username is not None or parts.password is not None:
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{_normalise_escapes(userinfo, _PATH_SAFE - frozenset(b'/@'))}@{netloc}"
    if port is not None and port != DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    # Escapes first, dot segments second (RFC 3986 6.2.2): "/x/%2e%2e/secret" is "/secret" to a
    # server, and robots.txt must judge the path the server will resolve. After the escape pass
    # the path holds only safe characters and upper-case escapes of reserved bytes, so removing
    # whole segments can neither decode nor form an escape: a second normalisation is a no-op.
    path = _remove_dot_segments(_normalise_escapes(parts.path, _PATH_SAFE)) or "/"
    if not path.startswith("/"):
        path = "/" + path
    query = _normalise_escapes(parts.query, _QUERY_SAFE)
    out = urlunsplit((scheme, netloc, path, query, ""))
    # urlunsplit drops an empty query ("?" alone); RFC 3986 keeps it as a distinct URI, and so do we.
    if not query and "?" in url.split("#", 1)[0][len(scheme) + 3 :]:
        out += "?"
    return out


def host_of(url: str) -> str:
    """The authority used for politeness and robots: host plus non-default port."""
    return urlsplit(url).netloc.rpartition("@")[2]


def request_target(url: str) -> str:
    """Path and query as sent on the request line."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query or url.endswith("?") else "")
