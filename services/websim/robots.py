"""websim's own robots.txt model: rules, rendering, parsing and RFC 9309 matching.

Written from RFC 9309 alone, independent of protego and of the crawler, so that the ground truth
does not share code with what it judges ("proofs must not be circular").

Matching (RFC 9309 section 2.2):
- a group applies when one of its user-agent values equals the crawler's product token,
  case-insensitively; all such groups are combined. With none, the "*" groups apply; with no
  "*" group either, everything is allowed;
- rule paths and the request's path+query are compared after decoding percent-encoded
  unreserved characters (and upper-casing the remaining %xx escapes);
- `*` matches any run of characters, a final `$` anchors the end;
- the longest matching rule path (in octets, as written) wins; an Allow wins a tie;
- no matching rule, or /robots.txt itself: allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class Rule:
    allow: bool
    path: str  # as written in the file: may hold * and a final $


@dataclass(frozen=True)
class Group:
    agents: tuple[str, ...]
    rules: tuple[Rule, ...] = ()
    crawl_delay: float | None = None


@dataclass(frozen=True)
class RobotsFile:
    groups: tuple[Group, ...] = ()
    sitemaps: tuple[str, ...] = ()

    def rules_for(self, user_agent: str) -> tuple[tuple[Rule, ...], float | None]:
        """(combined rules, crawl delay) of the groups that apply to `user_agent`."""
        token = product_token(user_agent)
        chosen = [g for g in self.groups if any(a.lower() == token for a in g.agents)]
        if not chosen:
            chosen = [g for g in self.groups if "*" in g.agents]
        rules = tuple(r for g in chosen for r in g.rules)
        delays = [g.crawl_delay for g in chosen if g.crawl_delay is not None]
        return rules, (max(delays) if delays else None)

    def allowed(self, user_agent: str, path_and_query: str) -> bool:
        rules, _ = self.rules_for(user_agent)
        return is_allowed(rules, path_and_query)

    def crawl_delay(self, user_agent: str) -> float | None:
        return self.rules_for(user_agent)[1]


def product_token(user_agent: str) -> str:
    """'ProvingGroundBot/0.1 (+http://x)' -> 'provinggroundbot' (RFC 9309 2.2.1)."""
    head = user_agent.strip().split("/", 1)[0].split(None, 1)
    return head[0].lower() if head else ""


def normalize_octets(text: str) -> str:
    """Decode %xx of unreserved characters, upper-case the other escapes, %-encode non-ASCII."""

    def fix(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in _UNRESERVED else "%" + m.group(1).upper()

    text = _PCT.sub(fix, text)
    if text.isascii():
        return text
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


@lru_cache(maxsize=4096)
def _compile(path: str) -> re.Pattern[str]:
    anchored = path.endswith("$")
    body = normalize_octets(path[:-1] if anchored else path)
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + (r"\Z" if anchored else ""), re.DOTALL)


def rule_matches(rule_path: str, path_and_query: str) -> bool:
    return _compile(rule_path).match(normalize_octets(path_and_query)) is not None


def is_allowed(rules: tuple[Rule, ...] | list[Rule], path_and_query: str) -> bool:
    if path_and_query.split("?", 1)[0] == "/robots.txt":
        return True
    best: Rule | None = None
    for rule in rules:
        if not rule.path or not rule_matches(rule.path, path_and_query):
            continue
        length = len(normalize_octets(rule.path).encode())
        if best is None:
            best = rule
            continue
        best_len = len(normalize_octets(best.path).encode())
        if length > best_len or (length == best_len and rule.allow and not best.allow):
            best = rule
    return best is None or best.allow


@dataclass
class _Builder:
    groups: list[Group] = field(default_factory=list)
    sitemaps: list[str] = field(default_factory=list)
    agents: list[str] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    delay: float | None = None
    in_rules: bool = False

    def close(self) -> None:
        if self.agents:
            self.groups.append(Group(tuple(self.agents), tuple(self.rules), self.delay))
        self.agents, self.rules, self.delay, self.in_rules = [], [], None, False


def parse(text: str | bytes, limit: int | None = None) -> RobotsFile:
    """Parse robots.txt text (RFC 9309 grammar; unknown or malformed lines are ignored).

    `limit` cuts the input to that many bytes first, as a crawler's parsing limit does.
    Used by websim's tests to check that the rendered files mean what the generator intended.
    """
    if isinstance(text, str):
        text = text.encode()
    if limit is not None:
        text = text[:limit]
    b = _Builder()
    for raw in re.split(r"\r\n|\r|\n", text.decode("utf-8", "replace")):
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (s.strip() for s in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if b.in_rules:
                b.close()
            b.agents.append(value)
        elif key in ("allow", "disallow"):
            if b.agents:
                b.in_rules = True
                if value:  # an empty path is no rule at all
                    b.rules.append(Rule(key == "allow", value))
        elif key == "crawl-delay":
            if b.agents:
                b.in_rules = True
                try:
                    b.delay = float(value)
                except ValueError:
                    pass
        elif key == "sitemap":
            b.sitemaps.append(value)
    b.close()
    return RobotsFile(tuple(b.groups), tuple(b.sitemaps))
