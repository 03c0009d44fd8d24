"""The generated web: deterministic, varied, and every href leads where the model says."""

from __future__ import annotations

import difflib
import hashlib
import statistics
from collections import Counter
from urllib.parse import urljoin

from services.websim import SimConfig, WebSim
from services.websim.document import render_page
from services.websim.web import locate

from .conftest import parse_links


def site_digest(sim: WebSim) -> str:
    h = hashlib.sha256()
    for host in sim.web.hosts.values():
        h.update(host.name.encode() + host.robots_kind.encode() + host.robots_text)
        for page in host.pages.values():
            h.update(page.pid.encode() + page.path.encode())
            if page.kind != "huge":
                h.update(render_page(sim.web, page))
        for r in host.redirects.values():
            h.update(f"{r.path}{r.status}{r.location}".encode())
    return h.hexdigest()


def test_same_config_gives_a_byte_identical_site() -> None:
    a, b = WebSim(SimConfig(hosts=60, seed=7)), WebSim(SimConfig(hosts=60, seed=7))
    assert site_digest(a) == site_digest(b)


def test_other_seed_or_knob_changes_the_site() -> None:
    base = site_digest(WebSim(SimConfig(hosts=60, seed=7)))
    assert site_digest(WebSim(SimConfig(hosts=60, seed=8))) != base
    assert site_digest(WebSim(SimConfig(hosts=60, seed=7, max_pages=20))) != base


def test_every_href_resolves_to_its_intended_target(sim: WebSim) -> None:
    # Rendered HTML parsed by the stdlib (not websim's model), resolved by urljoin: the links a
    # crawler sees must be exactly the links the ground truth walks.
    checked = 0
    for page in sim.web.all_pages():
        if page.kind not in ("html",):
            continue
        parsed = parse_links(render_page(sim.web, page), "latin-1" if "latin" in page.charset else "utf-8")
        own = f"http://{page.host}{page.path}"
        base = urljoin(own, parsed.base) if parsed.base else own
        seen = [
            (locate(urljoin(base, href)), "nofollow" in rel.lower().split()) for href, rel in parsed.links
        ]
        model = [((link.host, link.path) if link.host else None, link.nofollow) for link in page.links]
        assert seen == model, page.pid
        assert ("nofollow" in parsed.meta_robots) == page.nofollow, page.pid
        assert ("noindex" in parsed.meta_robots) == page.noindex, page.pid
        if page.canonical and not page.orphan:
            assert parsed.canonical == page.canonical
        checked += len(seen)
    assert checked > 3000


def test_hidden_links_in_comments_and_scripts_are_not_links(sim: WebSim) -> None:
    carriers = [p for p in sim.web.all_pages() if p.hidden_hrefs]
    assert carriers
    for page in carriers:
        body = render_page(sim.web, page)
        hrefs = [h for h, _ in parse_links(body).links]
        for hidden in page.hidden_hrefs:
            assert hidden.encode() in body  # a regex-based extractor would find it...
            assert all(not h.endswith(hidden) for h in hrefs)  # ...an HTML parser does not


def test_url_variants_appear_in_links(sim: WebSim) -> None:
    hrefs = [link.href for p in sim.web.all_pages() for link in p.links]
    assert any(":80/" in h for h in hrefs)
    assert any("#" in h for h in hrefs)
    assert any("/./" in h or "/../" in h for h in hrefs)
    assert any("%" in h for h in hrefs)
    assert any(h.startswith("//") for h in hrefs)
    assert any(h.startswith("http://") and h[7:].split("/")[0] != h[7:].split("/")[0].lower() for h in hrefs)
    assert any(h.startswith("../") for h in hrefs)
    assert any(h.startswith(("mailto:", "javascript:")) for h in hrefs)


def test_out_degree_follows_a_heavy_tailed_distribution(sim: WebSim) -> None:
    degrees = [len(p.links) for p in sim.web.all_pages() if p.kind == "html" and p.dup_of is None]
    assert max(degrees) >= 4 * statistics.median(degrees)
    counts = Counter(min(d, 20) for d in degrees)
    assert counts[1] + counts[2] + counts[3] > counts[10] + counts[11] + counts[12]


def test_default_site_has_every_feature(sim: WebSim) -> None:
    pages = sim.web.all_pages()
    kinds = Counter(h.robots_kind for h in sim.web.hosts.values())
    assert set(kinds) == {"normal", "404", "500", "unreachable", "slow", "huge", "redirect"}
    assert any(h.trap_start for h in sim.web.hosts.values())
    for predicate in (
        lambda p: p.kind == "huge",
        lambda p: p.kind == "pdf",
        lambda p: p.kind == "png",
        lambda p: p.malformed,
        lambda p: p.transient and p.transient[0] == 429,
        lambda p: p.transient and p.transient[0] == 503,
        lambda p: p.slow_s > 0,
        lambda p: p.noindex,
        lambda p: p.nofollow,
        lambda p: p.base_href,
        lambda p: p.dup_of,
        lambda p: p.near_of,
        lambda p: p.orphan,
        lambda p: p.charset == "wrong-header",
        lambda p: p.charset == "wrong-meta",
        lambda p: "?" in p.path,
        lambda p: any(link.nofollow for link in p.links),
    ):
        assert any(predicate(p) for p in pages)
    redirects = [r for h in sim.web.hosts.values() for r in h.redirects.values()]
    assert {r.status for r in redirects} == {301, 302, 307, 308}
    assert any(r.path.startswith("/loop/") for r in redirects)
    assert any(r.path.startswith("/hop6/") for r in redirects)
    assert any(r.target_host != r.host for r in redirects)
    assert any(h.gone for h in sim.web.hosts.values())


def test_exact_duplicates_share_bytes_and_near_duplicates_differ_slightly(sim: WebSim) -> None:
    for page in sim.web.all_pages():
        if page.dup_of:
            original = sim.web.page(page.dup_of)
            assert original is not None
            assert render_page(sim.web, page) == render_page(sim.web, original)
        if page.near_of:
            original = sim.web.page(page.near_of)
            assert original is not None
            a, b = render_page(sim.web, page), render_page(sim.web, original)
            assert a != b
            assert difflib.SequenceMatcher(None, a, b).ratio() > 0.9


def test_escaped_dot_segment_links_lead_to_disallowed_pages(sim: WebSim) -> None:
    """Links like "/zz/%2e%2e/private/p.html": a crawler that removes dot segments before decoding
    escapes requests "/zz/../private/p.html", and the judge (which resolves it to the disallowed
    "/private/p.html") counts a robots violation. The default web must offer such a bait."""
    from services.websim import truth

    seeds = sim.seeds(len(sim.web.hosts))
    reachable = sim.ground_truth(seeds, max_depth=8)
    baits = [
        (page, link)
        for host in sim.web.hosts.values()
        for page in host.pages.values()
        if page.pid in reachable
        for link in page.links
        if "%2e%2e" in link.href.lower()
        and link.host is not None
        and link.path is not None
        and not link.nofollow
        and not truth.allowed(sim.web, link.host, link.path)
    ]
    # baits that catch the bug: the literal "/zz/../p" is allowed by the rules, "/p" is not
    catching = [link for _, link in baits if truth.allowed(sim.web, link.host or "", f"/zz/..{link.path}")]
    assert len(catching) >= 20, len(catching)
    for page, link in baits:
        assert locate(urljoin(f"http://{page.host}{page.path}", link.href)) == (link.host, link.path)
