"""parse_html reads the tree in one CSS pass sorted by tag: a <base> after the links still applies to
them, the first <title> and the first canonical <link> win, a nofollow meta anywhere holds every
link back; `text=False` skips the visible text (only a sink reads it) and changes nothing else."""

from __future__ import annotations

import dataclasses

from services.crawler.parser import parse_html

HTML = """<html><head><title>First</title><link rel="stylesheet" href="/s.css">
<link rel="Canonical" href="/c1"><link rel="canonical" href="/c2"></head>
<body><a href="x">x</a><a href="/y" rel="NoFollow">y</a><area href="z">
<noscript><a href="/ns">n</a></noscript><script>var s = "<a href=/s>";</script>
<title>Second</title><p>Some  text</p><base href="http://o.example/dir/"></body></html>"""


def test_one_pass_reads_what_six_passes_read() -> None:
    page = parse_html(HTML, "http://h.example/a/b")
    assert page.base == "http://o.example/dir/"
    assert page.links == ["http://o.example/dir/x", "http://o.example/dir/z", "http://o.example/ns"]
    assert page.nofollow_links == 1
    assert page.canonical == "http://o.example/c1"
    assert page.title == "First"
    assert "Some text" in page.text and "var s" not in page.text


def test_a_nofollow_meta_after_the_links_holds_them_back() -> None:
    page = parse_html(
        '<a href="/a">a</a><meta name="robots" content="NoFollow, noindex">', "http://h.example/"
    )
    assert page.links == [] and page.nofollow and page.noindex


def test_text_is_only_read_when_asked() -> None:
    full = parse_html(HTML, "http://h.example/a/b")
    bare = parse_html(HTML, "http://h.example/a/b", text=False)
    assert bare.text == ""
    assert dataclasses.replace(full, text="") == bare
