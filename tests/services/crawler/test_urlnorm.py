"""URL normalisation: a table of RFC 3986 section 6 cases, and hypothesis properties."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protego import Protego

from services.crawler.robots import RobotsMode, RobotsPolicy
from services.crawler.urlnorm import InvalidURL, host_of, normalize, request_target
from services.websim.web import canonical_target

CASES = [
    # scheme and host case, default port
    ("HTTP://Www.Example.COM/", None, "http://www.example.com/"),
    ("http://example.com:80/a", None, "http://example.com/a"),
    ("https://example.com:443/a", None, "https://example.com/a"),
    ("http://example.com:8080/a", None, "http://example.com:8080/a"),
    ("https://example.com:80/a", None, "https://example.com:80/a"),
    # empty path, fragment
    ("http://example.com", None, "http://example.com/"),
    ("http://example.com/a#section", None, "http://example.com/a"),
    ("http://example.com/a?q=1#f", None, "http://example.com/a?q=1"),
    # dot segments
    ("http://example.com/a/./b/../c", None, "http://example.com/a/c"),
    ("http://example.com/../../a", None, "http://example.com/a"),
    ("../x", "http://example.com/a/b/c", "http://example.com/a/x"),
    # escaped dot segments are dot segments (decode unreserved first, then remove dots)
    ("http://example.com/x/%2e%2e/secret", None, "http://example.com/secret"),
    ("http://example.com/x/%2E./secret", None, "http://example.com/secret"),
    ("http://example.com/x/.%2e/secret", None, "http://example.com/secret"),
    ("http://example.com/a/%2e/b", None, "http://example.com/a/b"),
    ("%2e%2e/secret", "http://example.com/a/b", "http://example.com/secret"),
    ("http://example.com/%2e%2e%2fx", None, "http://example.com/..%2Fx"),  # %2F is no separator
    ("./", "http://example.com/a/b", "http://example.com/a/"),
    # percent-encoding: unreserved decoded, others upper-cased, raw unsafe characters encoded
    ("http://example.com/%7euser/%41%2d", None, "http://example.com/~user/A-"),
    ("http://example.com/a%2fb", None, "http://example.com/a%2Fb"),
    ("http://example.com/a b", None, "http://example.com/a%20b"),
    ("http://example.com/caf\u00e9", None, "http://example.com/caf%C3%A9"),
    ("http://example.com/50%", None, "http://example.com/50%25"),
    ("http://example.com/%a%41", None, "http://example.com/%25aA"),  # no new escape from a decode
    # query: never sorted, never dropped
    ("http://example.com/?b=2&a=1", None, "http://example.com/?b=2&a=1"),
    ("http://example.com/?a=%7e&a=%2F", None, "http://example.com/?a=~&a=%2F"),
    ("http://example.com/p?", None, "http://example.com/p?"),
    # trailing slash is never rewritten
    ("http://example.com/dir", None, "http://example.com/dir"),
    ("http://example.com/dir/", None, "http://example.com/dir/"),
    # IDNA hosts
    ("http://B\u00fccher.de/", None, "http://xn--bcher-kva.de/"),
    ("http://xn--bcher-kva.de/", None, "http://xn--bcher-kva.de/"),
    # relative references, protocol-relative, base hrefs
    ("//Other.Host/x", "https://example.com/", "https://other.host/x"),
    ("?q=1", "http://example.com/a/b", "http://example.com/a/b?q=1"),
    ("#top", "http://example.com/a", "http://example.com/a"),
    ("  /trim  ", "http://example.com/", "http://example.com/trim"),
    # IPv6 literals keep their brackets
    ("http://[::1]:8080/a", None, "http://[::1]:8080/a"),
]


@pytest.mark.parametrize(("url", "base", "expected"), CASES)
def test_normalisation_table(url: str, base: str | None, expected: str) -> None:
    assert normalize(url, base) == expected


@pytest.mark.parametrize(
    "url",
    [
        "mailto:a@b.c",
        "javascript:void(0)",
        "ftp://example.com/",
        "http://",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "data:text/html,hi",
        "http://a/" + "x" * 5000,
    ],
)
def test_rejects_what_cannot_be_crawled(url: str) -> None:
    with pytest.raises(InvalidURL):
        normalize(url)


def test_host_and_request_target() -> None:
    assert host_of("http://h.sim.test:8080/a?b") == "h.sim.test:8080"
    assert host_of("http://h.sim.test/a") == "h.sim.test"
    assert request_target("http://h.sim.test/a/b?x=1") == "/a/b?x=1"


# -- properties ---------------------------------------------------------------------------------
_SEGMENT_ATOMS = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        "-",
        ".",
        "_",
        "~",
        "%41",
        "%7e",
        "%7E",
        "%2f",
        "%2F",
        "%3a",
        "%e9",
        "%C3%A9",
        "\u00e9",
        "\u4e2d",
        " ",
        "!",
        "$",
        "&",
        "'",
        "(",
        ")",
        "*",
        "+",
        ",",
        ";",
        "=",
        ":",
        "@",
        "%",
        "%%",
        "%g1",
        '"',
        "<",
        "|",
        "^",
        "`",
        "{",
    ]
)
_segment = (
    st.lists(_SEGMENT_ATOMS, min_size=0, max_size=6).map("".join).filter(lambda s: s not in (".", ".."))
)
_label = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=8
)
_host = st.lists(_label, min_size=1, max_size=3).map(".".join)
_query = st.lists(st.tuples(_segment, _segment), max_size=4).map(
    lambda kv: "&".join(f"{k}={v}" for k, v in kv)
)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    host = draw(_host)
    port = draw(st.sampled_from(["", ":80", ":443", ":8080"]))
    path = "/" + "/".join(draw(st.lists(_segment, max_size=5)))
    query = draw(st.one_of(st.just(None), _query))
    fragment = draw(st.one_of(st.just(None), _segment))
    url = f"{scheme}://{host}{port}{path}"
    if query is not None:
        url += "?" + query
    if fragment is not None:
        url += "#" + fragment
    # Leading/trailing spaces are not part of a URL (browsers strip them from hrefs, so do we).
    return url.rstrip(" ")


def _server_view(url: str) -> tuple[str, int, list[bytes], bytes]:
    """What an origin server decodes from the request: host, port, path segments, query bytes.

    Written with urllib's own decoder, independent of the normaliser's escape handling.
    """
    parts = urlsplit(url)
    default = 443 if parts.scheme.lower() == "https" else 80
    path = parts.path or "/"
    segments = [unquote_to_bytes(seg) for seg in path.split("/")]
    query = unquote_to_bytes(parts.query.replace("+", "%2B"))
    return (parts.hostname or "").lower(), parts.port or default, segments, query


@settings(max_examples=400, deadline=None)
@given(urls())
def test_normalisation_is_idempotent(url: str) -> None:
    once = normalize(url)
    assert normalize(once) == once


@settings(max_examples=400, deadline=None)
@given(urls())
def test_normalisation_never_changes_what_the_server_sees(url: str) -> None:
    assert _server_view(normalize(url)) == _server_view(url)


@settings(max_examples=600, deadline=None)
@given(urls(), urls())
def test_relative_resolution_then_normalisation_is_stable(base: str, other: str) -> None:
    # A path-relative reference: the other URL's path and query, without the leading slashes.
    rest = other.split("://", 1)[1]
    # (leading spaces are stripped from hrefs, so they cannot hide a leading "//" either)
    ref = rest.split("/", 1)[1].lstrip("/ ") if "/" in rest else ""
    if ":" in ref.split("/", 1)[0].split("?", 1)[0]:
        ref = "./" + ref  # RFC 3986 4.2: "a:b" would be an absolute URI with scheme "a"
    resolved = normalize(ref, base)
    assert normalize(resolved) == resolved
    assert resolved.startswith(("http://", "https://"))


# -- dot segments, literal and escaped (the robots bypass "/x/%2e%2e/secret") -------------------
_DOT_ATOMS = st.sampled_from(["a", "secret", "x", "%41", "%7e", "%2F", "%25", "%", "%2", "%g"])
_dot_segment = st.one_of(
    st.sampled_from(
        [".", "..", "%2e", "%2E", "%2e%2e", "%2E%2E", ".%2e", "%2e.", "%2e%2E", "%2%65", "%252e"]
    ),
    st.lists(_DOT_ATOMS, min_size=0, max_size=3).map("".join),
)
_ROBOTS = Protego.parse("User-agent: *\nDisallow: /secret\nDisallow: /a/%2Fb\nAllow: /secret/ok\n")
_POLICY = RobotsPolicy(RobotsMode.RULES, "ProvingGroundBot", 200, parser=_ROBOTS)


@st.composite
def dotted_urls(draw: st.DrawFn) -> tuple[str, str]:
    """(URL, its raw request target) with dot segments written plainly and as escapes."""
    target = "/" + "/".join(draw(st.lists(_dot_segment, min_size=1, max_size=7)))
    if draw(st.booleans()):
        target += "?" + draw(st.lists(_dot_segment, max_size=3).map("/".join))
    return f"http://h.example{target}", target


@settings(max_examples=600, deadline=None)
@given(dotted_urls())
def test_escaped_dot_segments_are_resolved_like_the_server_does(case: tuple[str, str]) -> None:
    url, raw_target = case
    once = normalize(url)
    assert normalize(once) == once  # idempotent
    sent = request_target(once)
    # What an RFC 3986 server resolves (websim's own decoder, written apart from urlnorm): the
    # request line already names that path, so robots.txt judges what the server will serve.
    resolved = canonical_target(raw_target)
    assert canonical_target(sent) == sent
    assert sent == resolved
    assert _POLICY.allows(once) == _POLICY.allows(f"http://h.example{resolved}")


def test_robots_bypass_by_escaped_dots_is_closed() -> None:
    url = normalize("/x/%2e%2e/secret", "http://h.example/page")
    assert request_target(url) == "/secret"
    assert not _POLICY.allows(url)
