"""The JSON report: the fast indented encoder writes exactly what json.dumps(indent=2) writes."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.dedup.files import report
from services.dedup.files.indented_json import dumps_indent2
from services.dedup.files.scanner import scan

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    # Any code point, lone surrogates included (undecodable file names arrive as those).
    | st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
)
_keys = st.text(max_size=6) | st.integers(-5, 5) | st.booleans() | st.none() | st.floats(allow_nan=False)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        | st.dictionaries(_keys, inner, max_size=3)
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_same_text_as_json_dumps_indent2(obj: object) -> None:
    assert dumps_indent2(obj) == json.dumps(obj, indent=2)


def test_unencodable_values_raise_like_json_dumps() -> None:
    for bad in ({"a": {1, 2}}, [object()], {"x": [1, b"bytes"]}):
        try:
            json.dumps(bad, indent=2)
        except TypeError as exc:
            expected = str(exc)
        try:
            dumps_indent2(bad)
        except TypeError as exc:
            assert str(exc) == expected
        else:
            raise AssertionError(f"{bad!r} was encoded")


def test_scan_report_text_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "t"
    root.mkdir()
    for i in range(6):
        (root / f"a{i}").write_bytes(b"same content" * (i % 2 + 1))
    os.link(root / "a0", root / "a0-link")
    (root / os.fsdecode(b"bad-\xff-name")).write_bytes(b"same content")
    result = scan([root])
    out = io.StringIO()
    report.write_json(result, out)
    assert out.getvalue() == json.dumps(report.to_dict(result), indent=2) + "\n"
    data = json.loads(out.getvalue())
    assert data["totals"]["groups"] == 2
    assert any("path_b64" in f for g in data["groups"] for f in g["files"])


def test_records_with_separator_like_strings() -> None:
    tricky = ["},\n      {", "}", "{", '"},', "\\", "\udcff", "é"]
    rows = [{"k": s, "n": i, "f": 1.5, "z": None, "b": True} for i, s in enumerate(tricky)]
    for obj in (rows, {"groups": [{"files": rows, "size": 3}], "x": [rows, rows]}):
        assert dumps_indent2(obj) == json.dumps(obj, indent=2)
