"""normalize() remembers its results by a key that holds all they depend on; its fast paths
(nothing to escape, no dot segment, a plain absolute URL; host_of and url_pattern on a plain URL)
give what the full loops and urlsplit give."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.crawler import urlnorm
from services.crawler.traps import url_pattern
from services.crawler.urlnorm import InvalidURL, host_of, normalize


def _uncached(url: str, base: str | None) -> str:
    url = url.strip(" \t\r\n\x0c").replace("\t", "").replace("\n", "").replace("\r", "")
    return urlnorm._normalize(url, base)


def _outcome(fn: Callable[[str, str | None], str], url: str, base: str | None) -> str:
    try:
        return str(fn(url, base))
    except InvalidURL:
        return "<invalid>"


# The loops as they were before the fast paths (the oracle).
def _escapes_loop(part: str, safe: frozenset[int]) -> str:
    raw = part.encode("utf-8", "surrogatepass")
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        if b == 0x25 and i + 2 < n and raw[i + 1] in urlnorm._HEX and raw[i + 2] in urlnorm._HEX:
            value = int(raw[i + 1 : i + 3], 16)
            out += bytes([value]) if value in urlnorm._UNRESERVED else b"%" + raw[i + 1 : i + 3].upper()
            i += 3
            continue
        out += bytes([b]) if b in safe else b"%%%02X" % b
        i += 1
    return out.decode("ascii")


def _dots_loop(path: str) -> str:
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


_PIECES = st.sampled_from(
    ["a", "B", "/", "//", ".", "..", "%2e", "%2F", "%41", "%", "?", "#", ";", ":", "@", "~", " ", "\t",
     "é", "x=1", "&", "[", "]", ":80", ":443", "\\", "\x01"]
)  # fmt: skip
_PARTS = st.lists(_PIECES, max_size=8).map("".join)
_HEADS = st.sampled_from(
    ["", "/", "//", "///", "http://", "https://", "HTTP://", "http:", "http:///", "https:/", "ftp://",
     "//h.example", "http://h.example", "http://H.Example:80", "https://h.example:8443", "?", "#", "./",
     "../", " http://h.example", "\thttp://h.example", "http://u:p@h.example", "http://[::1]"]
)  # fmt: skip
_REFS = st.tuples(_HEADS, _PARTS).map("".join)
_BASES = st.sampled_from(
    ["http://h.example/", "http://h.example/a/b?q", "http://h.example/a/b/", "https://h.example/",
     "https://h.example/x/", "http://other.example/", "http://h.example", "http://h.example?q",
     "http://h.example:8080/p", "HTTP://h.example/", "https://h.example:443/", "ftp://h.example/",
     "httpsx://h.example/", "", ":x", "http://u@h.example/z", "http://[::1]/a"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(_REFS, st.lists(_BASES, min_size=1, max_size=6))
def test_a_remembered_result_is_the_one_computed_afresh(ref: str, bases: list[str]) -> None:
    for base in bases:  # one reference against several bases in a row: the cache is shared
        assert _outcome(normalize, ref, base) == _outcome(_uncached, ref, base), (ref, base)
    assert _outcome(normalize, ref, None) == _outcome(_uncached, ref, None)


def test_links_of_many_pages_share_one_entry() -> None:
    urlnorm._recent.clear()
    urlnorm._older.clear()
    for page in ("http://h.example/a", "http://h.example/b/c", "http://h.example/d?e"):
        assert normalize("/x", page) == "http://h.example/x"
        assert normalize("http://O.example:80/", page) == "http://o.example/"
        assert normalize("//o.example/y#f", page) == "http://o.example/y"
    assert len(urlnorm._recent) == 3
    # the same absolute-path reference on another authority or scheme is another entry
    assert normalize("/x", "https://h.example/a") == "https://h.example/x"
    assert normalize("/x", "http://g.example/a") == "http://g.example/x"
    assert normalize("//o.example/y", "https://h.example/") == "https://o.example/y"
    assert len(urlnorm._recent) == 6


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urlnorm, "_CACHE_SIZE", 10)
    urlnorm._recent.clear()
    urlnorm._older.clear()
    for i in range(35):
        assert normalize(f"/p{i}", "http://h.example/") == f"http://h.example/p{i}"
        assert len(urlnorm._recent) <= 10 and len(urlnorm._older) <= 10
    assert normalize("/p34", "http://h.example/") == "http://h.example/p34"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "/", ".", "..", "./", "../", "/.", "/..", ".a", "a."]), max_size=10))
def test_dot_segment_fast_path(pieces: list[str]) -> None:
    path = "".join(pieces)
    assert urlnorm._remove_dot_segments(path) == _dots_loop(path)


@settings(max_examples=400, deadline=None)
@given(_PARTS)
def test_escape_fast_path(part: str) -> None:
    for safe in (urlnorm._PATH_SAFE, urlnorm._QUERY_SAFE):
        assert urlnorm._normalise_escapes(part, safe) == _escapes_loop(part, safe)


_ABSOLUTE = st.tuples(
    st.sampled_from(["http://", "https://", "HTTP://", "http:/", "ftp://", ""]),
    st.sampled_from(["h.example", "H.Example", "a-b.c", "h_x.example", "u@h.example", "[::1]", "",
                     "é.example", "h.example.", "1.2.3.4"]),
    st.sampled_from(["", ":80", ":443", ":8080", ":0", ":080", ":65535", ":65536", ":99999", ":", ":x"]),
    _PARTS,
).map("".join)  # fmt: skip


@settings(max_examples=600, deadline=None)
@given(_ABSOLUTE)
def test_the_plain_shape_fast_path_gives_what_urlsplit_gives(url: str) -> None:
    def slow(u: str, _base: str | None) -> str:
        return urlnorm._normalize_absolute(u)

    assert _outcome(urlnorm._normalize, url, None) == _outcome(slow, url, None), url


@settings(max_examples=600, deadline=None)
@given(st.tuples(_ABSOLUTE, st.sampled_from(["", "#f", "?#", "\t/x", "/a\tb"])).map("".join))
def test_host_and_pattern_fast_paths_read_what_urlsplit_reads(url: str) -> None:
    try:
        parts = urlsplit(url)
        slow_host = parts.netloc.rpartition("@")[2]
    except ValueError:
        with pytest.raises(ValueError):
            host_of(url)
        return
    assert host_of(url) == slow_host, url
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    assert url_pattern(url) == re.sub(r"\d+", "#", target), url
