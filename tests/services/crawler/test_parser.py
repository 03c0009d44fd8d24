"""HTML parsing: links, base href, canonical, meta robots, nofollow, charsets, and malformed input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.crawler.parser import decode_body, parse_html
from services.crawler.urlnorm import normalize

URL = "http://h.sim.test/dir/page.html"


def test_links_resolve_against_base_href_and_skip_nofollow() -> None:
    html = """<html><head><base href="http://other.sim.test/b/"><link rel="Canonical" href="/canon">
    </head><body><a href="x">x</a><a href="/y#frag">y</a><a rel="ugc NoFollow" href="z">z</a>
    <a href="mailto:a@b.c">m</a><a href="javascript:void(0)">j</a><area href="../area">
    <!-- <a href="/in-comment">c</a> --><script>var s = '<a href="/in-script">s</a>';</script>
    <a href="x">again</a></body></html>"""
    page = parse_html(html, URL)
    assert page.links == [
        "http://other.sim.test/b/x",
        "http://other.sim.test/y",
        "http://other.sim.test/area",
    ]
    assert page.nofollow_links == 1
    assert page.canonical == "http://other.sim.test/canon"
    assert "var s" not in page.text


def test_meta_robots_nofollow_and_noindex() -> None:
    page = parse_html('<meta name="ROBOTS" content="noindex, NOFOLLOW"><a href="/a">a</a>', URL)
    assert page.noindex and page.nofollow and page.links == []
    page = parse_html('<meta name="provinggroundbot" content="none"><a href="/a">a</a>', URL)
    assert page.noindex and page.nofollow
    page = parse_html('<meta name="otherbot" content="nofollow"><a href="/a">a</a>', URL)
    assert not page.nofollow and page.links == ["http://h.sim.test/a"]


def test_charsets_header_meta_and_wrong() -> None:
    latin = "<p>caf\u00e9</p>".encode("latin-1")
    assert "caf\u00e9" in decode_body(latin, "iso-8859-1")
    assert "caf\u00e9" in decode_body(b'<meta charset="latin1">' + latin, None)
    assert decode_body(latin, "no-such-charset").startswith("<p>caf")  # falls back, never raises
    assert "caf\u00e9" in decode_body("<p>caf\u00e9</p>".encode(), None)


def test_malformed_html_is_repaired_not_fatal() -> None:
    for html in [
        "<a href='/a'",
        "<<<>>><a href=/b>b",
        '<html><body><a href="/c">',
        "\x00\x01<a href=/d>",
        "<table><a href=/e>e</td></tr>",
        "",
    ]:
        page = parse_html(html, URL)
        assert all(link.startswith("http://h.sim.test/") for link in page.links)


_fragments = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "<a href='",
                "'>",
                "<a href=",
                ">",
                "</a>",
                "<base href='",
                "<meta name=robots content=",
                "nofollow",
                "<!--",
                "-->",
                "<script>",
                "</script>",
                "<",
                "&amp;",
                "&#0;",
                '"',
                "'",
            ]
        ),
        st.text(max_size=12),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(_fragments)
def test_any_input_parses_and_yields_only_normalised_http_links(html: str) -> None:
    page = parse_html(html, URL)
    for link in page.links:
        assert link.startswith(("http://", "https://"))
        assert normalize(link) == link
    assert len(page.links) == len(set(page.links))
