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
# A part made only of these (the safe sets above, no "%") comes out of _normalise_escapes unchanged.
_PATH_CLEAN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_QUERY_CLEAN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?]*")
# The scheme and authority of a base, as urlsplit sees them: what an absolute-path reference
# ("/x") resolved against that base depends on (besides the reference itself).
_BASE_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#\x00-\x20\x7f]*(?=[/?#]|\Z)")
_CACHE_SIZE = 50_000  # results kept per generation (two generations: the last ones asked stay)
_MAX_URL_LENGTH = 4096


class InvalidURL(ValueError):
    """Raised when a string cannot be turned into a crawlable http(s) URL."""


def _normalise_escapes(part: str, safe: frozenset[int]) -> str:
    """Decode escapes of unreserved bytes, upper-case the rest, escape what may not appear raw."""
    if safe is _PATH_SAFE:
        if _PATH_CLEAN.fullmatch(part):
            return part  # only characters that stay as they are, no "%": the loop would copy it
    elif safe is _QUERY_SAFE and _QUERY_CLEAN.fullmatch(part):
        return part
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
    if "/." not in path and not path.startswith("."):
        return path  # no "." or ".." segment: nothing to remove
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


_recent: dict[object, str] = {}
_older: dict[object, str] = {}


def _cache_key(url: str, base: str | None) -> object:
    """What the result of normalize(url, base) depends on, `url` already stripped of blanks.

    urljoin resolves an absolute reference with an authority ("http://h/x", "//h/x") by the
    base's scheme alone, and an absolute-path one ("/x") by the base's scheme and authority:
    links found on many pages share a key, whatever page they were found on. Any other
    reference ("x", "../x", "?q", "") is keyed by the whole base. The scheme is keyed as the
    base's text up to its first ":", from which urlsplit reads it."""
    if base is None:
        return url
    if url[:1] == "/":
        if url[1:2] == "/":
            if url[2:3] not in ("", "/", "?", "#"):  # "//host...": the base's scheme only
                return (base.partition(":")[0], url)
        else:
            m = _BASE_ORIGIN.match(base)
            if m is not None:
                return (m[0], url, "/")
    elif url.startswith(("http://", "https://")):
        at = 7 if url[4] == ":" else 8
        if url[at : at + 1] not in ("", "/", "?", "#"):  # an authority of its own
            return (base.partition(":")[0], url)
    return (base, url, "")


def normalize(url: str, base: str | None = None) -> str:
    """Return the normalised absolute form of `url` (resolved against `base`), or raise InvalidURL.

    Results are remembered (the last 50,000-100,000 distinct references): a page's links repeat
    across the pages of a crawl, and each is normalised once."""
    global _recent, _older
    url = url.strip(" \t\r\n\x0c")
    # Browsers drop tabs and newlines anywhere in a URL (WHATWG URL parser); do the same.
    if "\t" in url or "\n" in url or "\r" in url:
        url = url.replace("\t", "").replace("\n", "").replace("\r", "")
    key = _cache_key(url, base)
    out = _recent.get(key)
    if out is None:
        out = _older.get(key)
        if out is None:
            out = _normalize(url, base)  # (an InvalidURL is not remembered)
        if len(_recent) >= _CACHE_SIZE:
            _older = _recent
            _recent = {}
        _recent[key] = out
    return out


def _normalize(url: str, base: str | None) -> str:
    if base is not None:
        try:  # (urljoin splits both: "http://[x/" raises ValueError there, not below)
            url = urljoin(base, url)
        except ValueError as exc:
            raise InvalidURL(str(exc)) from None
    if len(url) > _MAX_URL_LENGTH:
        raise InvalidURL(f"URL longer than {_MAX_URL_LENGTH} characters")
    m = _PLAIN.match(url)
    if m is not None:
        return _normalize_plain(m)
    return _normalize_absolute(url)


# An absolute URL of the common shape, with nothing urlsplit would read differently: a lower-case
# http(s) scheme, a host of letters, digits, dots and hyphens (no userinfo, no IP-v6 brackets), an
# optional port of digits, no tab or line break (urlsplit drops those). Its parts are what
# urlsplit would return: _normalize_plain gives what _normalize_absolute gives for it (the tests
# compare the two), without urlsplit and its properties.
_PLAIN = re.compile(
    r"(https?)://([A-Za-z0-9.\-]+)(?::([0-9]{1,5}))?(/[^?#\t\r\n]*)?(?:\?([^#\t\r\n]*))?(?:#[^\t\r\n]*)?\Z"
)


def _normalize_plain(m: re.Match[str]) -> str:
    scheme, host, port, path, query = m.groups()
    netloc = host.lower()
    if port is not None:
        number = int(port)
        if number > 65535:
            return _normalize_absolute(m.string)  # (raises InvalidURL, as urlsplit would)
        if number != DEFAULT_PORTS[scheme]:
            netloc = f"{netloc}:{number}"
    path = _remove_dot_segments(_normalise_escapes(path, _PATH_SAFE)) if path else "/"
    if not path:
        path = "/"
    elif path[0] != "/":
        path = "/" + path
    if query is None:
        return f"{scheme}://{netloc}{path}"
    query = _normalise_escapes(query, _QUERY_SAFE)
    return f"{scheme}://{netloc}{path}?{query}"  # (an empty query keeps its "?", as below)


def _normalize_absolute(url: str) -> str:
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


# "http(s)://" and an authority urlsplit reads the same (no tab, line break or bracket in it),
# ended by "/", "?", "#" or the end: what a normalised URL always starts with.
_AUTHORITY = re.compile(r"https?://([^/?#\[\]\x00-\x20]*)(?=[/?#]|\Z)")


def host_of(url: str) -> str:
    """The authority used for politeness and robots: host plus non-default port."""
    m = _AUTHORITY.match(url)
    if m is not None:
        return m[1].rpartition("@")[2]
    return urlsplit(url).netloc.rpartition("@")[2]


def split_authority(url: str) -> tuple[str, str] | None:
    """("http(s)://authority", the rest) of a URL of the plain shape (see _AUTHORITY), else None."""
    m = _AUTHORITY.match(url)
    return None if m is None else (m[0], url[m.end() :])


def request_target(url: str) -> str:
    """Path and query as sent on the request line."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query or url.endswith("?") else "")
