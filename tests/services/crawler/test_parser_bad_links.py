"""A link that urljoin itself refuses ("http://[x/": an unclosed IPv6 bracket) is dropped like any
other link that does not normalise; it used to raise ValueError out of parse_html and fail the page."""

from __future__ import annotations

import pytest

from services.crawler.parser import parse_html
from services.crawler.urlnorm import InvalidURL, normalize


@pytest.mark.parametrize("href", ["http://[x/", "//[x/", "http://h.example]/", "https://[::1/a"])
def test_an_unparseable_reference_is_invalid(href: str) -> None:
    with pytest.raises(InvalidURL):
        normalize(href, "http://h.example/")


def test_a_page_with_such_a_link_keeps_its_other_links() -> None:
    html = (
        '<html><head><link rel=canonical href="http://[c/"></head>'
        '<body><a href="http://[x/">x</a><a href="/ok">ok</a></body></html>'
    )
    page = parse_html(html, "http://h.example/")
    assert page.links == ["http://h.example/ok"]
    assert page.canonical is None
