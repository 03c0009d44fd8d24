"""Property tests: settings parse what they print, and reject junk with one line; request ids."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from libs.service.request_id import accept_request_id
from libs.service.settings import ServiceSettings, SettingsError, parse_settings


class Props(ServiceSettings):
    workers: int = Field(4, description="workers")
    rate: float = Field(1.0, description="rate")
    tags: list[str] = Field(default_factory=list, description="tags")
    name: str = Field("x", description="name")


def parse(argv: list[str], env: dict[str, str] | None = None) -> Props:
    return parse_settings(Props, argv, env_prefix="PG_P_", env=env or {})


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_any_integer_round_trips_through_flag_and_env(n: int) -> None:
    assert parse(["--workers", str(n)]).workers == n
    assert parse([], {"PG_P_WORKERS": str(n)}).workers == n


@given(st.text(min_size=1).filter(lambda t: not re.fullmatch(r"\s*[+-]?[\d_]+(\.0*)?\s*", t)))
def test_non_integers_are_rejected_naming_the_flag(text: str) -> None:
    if text.startswith("-"):  # argparse would read it as another flag
        text = "x" + text
    with pytest.raises(SettingsError) as err:
        parse(["--workers", text])
    assert err.value.source == "--workers"
    assert err.value.message.startswith("expected an integer")
    assert "\n" not in str(err.value).replace(repr(text), "")  # one line, whatever the input


item = st.text(
    alphabet=st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), min_size=1
).filter(lambda s: s.strip() == s and s != "")


@given(st.lists(item, max_size=6), st.integers(min_value=1, max_value=3))
def test_list_values_split_on_commas_whether_joined_or_repeated(items: list[str], groups: int) -> None:
    # `--tags=VALUE`: a value may start with '-' (e.g. "-:"), which `--tags VALUE` reads as a flag.
    joined = parse([f"--tags={','.join(items)}"] if items else []).tags
    assert joined == items
    argv: list[str] = []
    for k in range(groups):
        part = items[k::groups]
        if part:
            argv += [f"--tags={','.join(part)}"]
    expected = [x for k in range(groups) for x in items[k::groups]]
    assert parse(argv).tags == expected


def test_a_value_that_looks_like_a_flag_gets_a_one_line_hint() -> None:
    with pytest.raises(SettingsError) as err:
        parse(["--tags", "-:"])
    assert "--tags=VALUE" in str(err.value) and "\n" not in str(err.value)
    assert parse(["--tags=-:"]).tags == ["-:"]


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_request_id_is_echoed_only_when_well_formed(value: str) -> None:
    got = accept_request_id(value)
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}", value):
        assert got == value
    else:
        assert re.fullmatch(r"[0-9a-f]{32}", got)
