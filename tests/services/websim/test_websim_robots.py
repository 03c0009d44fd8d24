"""websim's own RFC 9309 matcher and the robots.txt files it serves."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.websim import ROBOTS_PARSE_LIMIT, WebSim
from services.websim.robots import (
    Group,
    RobotsFile,
    Rule,
    is_allowed,
    parse,
    product_token,
    rule_matches,
)

UA = "ProvingGroundBot/0.1 (+http://example.test/bot)"


@pytest.mark.parametrize(
    ("rule", "path", "matches"),
    [
        ("/fish", "/fish", True),
        ("/fish", "/fish.html", True),
        ("/fish", "/Fish.asp", False),  # case-sensitive
        ("/fish/", "/fish", False),
        ("/*.php", "/index.php", True),
        ("/*.php", "/filename.php?parameters", True),
        ("/*.php$", "/filename.php", True),
        ("/*.php$", "/filename.php?parameters", False),
        ("/fish*.php", "/fishheads/catfish.php?x", True),
        ("/foo/bar/%62%61%7A", "/foo/bar/baz", True),  # RFC 9309 2.2.2 table
        ("/foo/bar/baz", "/foo/bar/%62%61%7A", True),
        ("/foo/bar/ツ", "/foo/bar/%E3%83%84", True),
        ("/foo/bar/%E3%83%84", "/foo/bar/%e3%83%84", True),
        ("/a%2Fb", "/a/b", False),  # an encoded reserved character stays encoded
        ("/$", "/", True),
        ("/$", "/x", False),
        ("/*", "/anything", True),
    ],
)
def test_rule_matching_follows_rfc_9309(rule: str, path: str, matches: bool) -> None:
    assert rule_matches(rule, path) is matches


def test_longest_match_wins_and_allow_wins_a_tie() -> None:
    rules = [Rule(False, "/private/"), Rule(True, "/private/open-")]
    assert not is_allowed(rules, "/private/x.html")
    assert is_allowed(rules, "/private/open-x.html")
    assert is_allowed([Rule(False, "/ties/"), Rule(True, "/ties/")], "/ties/a")
    assert is_allowed([Rule(True, "/ties/"), Rule(False, "/ties/")], "/ties/a")
    only = [Rule(False, "/"), Rule(True, "/$"), Rule(True, "/p/")]
    assert is_allowed(only, "/") and is_allowed(only, "/p/x") and not is_allowed(only, "/q")
    assert is_allowed([Rule(False, "/")], "/robots.txt")  # robots.txt itself is always allowed
    assert is_allowed([Rule(False, "")], "/x")  # an empty Disallow is no rule


def test_group_selection_by_product_token() -> None:
    robots = parse(
        "User-agent: OtherBot\nDisallow: /\n\nuser-agent: PROVINGGROUNDBOT\nDisallow: /a\nCrawl-delay: 0.2\n"
        "User-agent: *\nDisallow: /b\nCrawl-delay: 3\n\nUser-agent: provinggroundbot\nDisallow: /c\n"
    )
    assert product_token(UA) == "provinggroundbot"
    assert not robots.allowed(UA, "/a") and not robots.allowed(UA, "/c")  # both groups combined
    assert robots.allowed(UA, "/b")  # the * group does not apply once a named group does
    assert robots.crawl_delay(UA) == 0.2
    assert robots.crawl_delay("SomeBot/1.0") == 3 and not robots.allowed("SomeBot", "/b")
    assert not robots.allowed("OtherBot", "/x")
    assert parse("Disallow: /orphan\n").allowed(UA, "/orphan")  # rules outside any group


rule_paths = st.text(alphabet="/abc*$%2F.?=", min_size=0, max_size=12)
groups = st.lists(
    st.builds(
        Group,
        st.lists(
            st.sampled_from(["ProvingGroundBot", "*", "OtherBot", "provinggroundbot"]), min_size=1, max_size=2
        ).map(tuple),
        st.lists(
            st.builds(Rule, st.booleans(), rule_paths.map(lambda p: "/" + p.lstrip("/"))), max_size=5
        ).map(tuple),
        st.one_of(st.none(), st.sampled_from([0.05, 0.25, 1.0])),
    ),
    max_size=4,
)


def _render(robots: RobotsFile) -> str:
    out = []
    for g in robots.groups:
        out += [f"User-agent: {a}" for a in g.agents]
        out += [f"{'Allow' if r.allow else 'Disallow'}: {r.path}" for r in g.rules]
        if g.crawl_delay is not None:
            out.append(f"Crawl-delay: {g.crawl_delay}")
        if not g.rules and g.crawl_delay is None:
            out.append("Disallow:")  # else the next group's agents would join this group
        out.append("")
    return "\n".join(out)


@settings(max_examples=150, deadline=None)
@given(groups, st.lists(rule_paths, min_size=1, max_size=5))
def test_parse_of_a_rendering_means_the_same(gs: list[Group], paths: list[str]) -> None:
    robots = RobotsFile(tuple(gs))
    back = parse(_render(robots))
    for ua in ("ProvingGroundBot/1", "OtherBot", "zzz"):
        assert back.crawl_delay(ua) == robots.crawl_delay(ua)
        for p in paths:
            path = "/" + p.lstrip("/")
            assert back.allowed(ua, path) == robots.allowed(ua, path)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_parser_survives_garbage(blob: bytes) -> None:
    robots = parse(blob)
    robots.allowed(UA, "/x")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.builds(Rule, st.booleans(), st.text(max_size=10)), max_size=6), st.text(max_size=20))
def test_matcher_is_total_and_a_prefix_disallow_always_binds(rules: list[Rule], tail: str) -> None:
    is_allowed(rules, "/" + tail)
    # With a single Disallow for a prefix, every path under it is disallowed (except robots.txt).
    assert not is_allowed([Rule(False, "/zz")], "/zz" + tail)


def test_served_robots_files_mean_what_the_model_says(sim: WebSim) -> None:
    for host in sim.web.hosts.values():
        if host.robots is None:
            assert host.robots_kind in ("404", "500", "unreachable")
            continue
        served = parse(host.robots_text, limit=ROBOTS_PARSE_LIMIT)
        for ua in (UA, "OtherBot/2", "SomeOtherBot", "RandomBot"):
            assert served.crawl_delay(ua) == host.robots.crawl_delay(ua), host.name
            for path in [*host.pages, *host.redirects, "/calendar/2026/03", "/p/a.html"]:
                assert served.allowed(ua, path) == host.robots.allowed(ua, path), (host.name, path)


def test_huge_robots_rules_come_first_and_the_rest_is_neutral(sim: WebSim) -> None:
    huge = [h for h in sim.web.hosts.values() if h.robots_kind == "huge"]
    assert huge
    for host in huge:
        assert len(host.robots_text) > ROBOTS_PARSE_LIMIT
        head, whole = parse(host.robots_text, limit=ROBOTS_PARSE_LIMIT), parse(host.robots_text)
        assert head == whole == parse(host.robots_text, limit=20_000)
