"""The span log (docs/formats/span-log.schema.json): records arrive children first and the
tree is rebuilt by span_id/parent_id; every record the tests write is schema-valid."""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.service.spans import SpanLog
from libs.trace import CrossedNesting, MissingEnd, NegativeDuration, read_trace
from libs.trace.calltree import CallTree

from .tracetext import paths, tree_of

SCHEMA = json.loads((Path(__file__).parents[3] / "docs/formats/span-log.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

Spec = tuple[str, float, float, list]  # (name, start, dur, children)


BASE = 1_700_000_000.0


def span_log(spec: Spec, *, trace: int = 1, service: str = "crawler", base: float = BASE) -> list[dict]:
    """Records for a span tree, in the order libs.service writes them: a span when it ends, so
    post-order (children first, siblings by end time)."""
    ids = itertools.count(1)
    records: list[dict] = []

    def visit(node: Spec, parent: str | None) -> None:
        name, start, dur, children = node
        span_id = f"{next(ids) + 1000 * trace:016x}"
        for child in sorted(children, key=lambda c: c[1] + c[2]):
            visit(child, span_id)
        record = {
            "ts": base + start,
            "dur": dur,
            "name": name,
            "trace_id": f"{trace:032x}",
            "span_id": span_id,
            "parent_id": parent,
            "service": service,
            "status": "ok",
        }
        records.append(record)

    visit(spec, None)
    return records


def text_of(records: list[dict]) -> str:
    for record in records:
        VALIDATOR.validate(record)
    return "".join(json.dumps(r) + "\n" for r in records)


REQUEST: Spec = (
    "request",
    0.0,
    1.0,
    [
        ("parse", 0.1, 0.2, []),
        ("fetch", 0.3, 0.6, [("dns", 0.3, 0.1, []), ("connect", 0.4, 0.2, [])]),
    ],
)


def test_children_first_records_rebuild_the_tree() -> None:
    records = span_log(REQUEST)
    assert records[-1]["name"] == "request" and records[0]["name"] == "parse"
    tree, trace = tree_of(text_of(records))
    assert trace.format == "spans" and trace.unit == "s"
    got = {p: (c, round(i, 6), round(e, 6)) for p, (c, i, e) in paths(tree).items()}
    assert got == {
        "request": (1, 1.0, 0.2),
        "request;parse": (1, 0.2, 0.2),
        "request;fetch": (1, 0.6, 0.3),
        "request;fetch;dns": (1, 0.1, 0.1),
        "request;fetch;connect": (1, 0.2, 0.2),
    }


def test_each_trace_is_its_own_track_even_when_traces_interleave() -> None:
    one = span_log(("get", 0.0, 1.0, [("db", 0.2, 0.5, [])]), trace=1)
    two = span_log(("get", 0.5, 1.0, [("db", 0.6, 0.2, [])]), trace=2)
    merged = sorted(one + two, key=lambda r: r["ts"] + r["dur"])
    events = list(read_trace(text_of(merged).splitlines(), source="spans").events)
    assert {e.track for e in events} == {f"crawler {1:032x}", f"crawler {2:032x}"}
    tree = CallTree.from_events(events)
    assert paths(tree)["get"][0] == 2 and round(tree.total, 6) == 2.0


def test_overlapping_siblings_go_to_their_own_lane() -> None:
    spec: Spec = ("gather", 0.0, 1.0, [("task-a", 0.1, 0.5, []), ("task-b", 0.2, 0.5, [])])
    events = list(read_trace(text_of(span_log(spec)).splitlines()).events)
    lanes = {e.track for e in events if e.name == "task-b"}
    assert len(lanes) == 1 and next(iter(lanes)).endswith(" #1")
    tree = CallTree.from_events(events)
    # task-b is a root on its lane; gather's exclusive time excludes only task-a.
    assert round(paths(tree)["gather"][2], 6) == 0.5
    assert "task-b" in paths(tree)


def test_clock_noise_within_tolerance_is_clipped_silently() -> None:
    spec: Spec = ("outer", 0.0, 1.0, [("inner", 0.5, 0.5004, [])])
    tree, trace = tree_of(text_of(span_log(spec)))
    assert round(paths(tree)["outer;inner"][1], 9) == 0.5
    assert trace.warnings == []


def test_child_sticking_out_of_parent_is_crossed_nesting() -> None:
    spec: Spec = ("outer", 0.0, 1.0, [("inner", 0.5, 0.9, [])])
    records = span_log(spec)
    message = r"^t\.log:1: span 'inner'.*sticks out of its parent 'outer' \(line 2\)"
    with pytest.raises(CrossedNesting, match=message):
        tree_of(text_of(records))
    tree, trace = tree_of(text_of(records), lenient=True)
    assert round(paths(tree)["outer;inner"][1], 6) == 0.5
    assert [(w.kind, w.line) for w in trace.warnings] == [("CrossedNesting", 1)]


def test_record_whose_parent_never_comes_is_a_missing_end() -> None:
    records = span_log(REQUEST)[:-1]  # the root never written (process killed mid-request)
    with pytest.raises(MissingEnd, match=r"^t\.log:1: span 'parse' names parent"):
        tree_of(text_of(records))
    tree, trace = tree_of(text_of(records), lenient=True)
    assert {"parse", "fetch", "fetch;dns", "fetch;connect"} == set(paths(tree))
    assert [w.kind for w in trace.warnings] == ["MissingEnd", "MissingEnd"]


def test_negative_duration_and_bad_fields_name_line_and_field() -> None:
    good = span_log(("a", 0.0, 1.0, []))[0]
    with pytest.raises(NegativeDuration, match=r"^t\.log:1: span 'a' has negative duration"):
        tree_of(json.dumps({**good, "dur": -1}))
    with pytest.raises(Exception, match=r"^t\.log:1: field 'span_id'"):
        tree_of(json.dumps({**good, "span_id": "XYZ"}), "spans")
    with pytest.raises(Exception, match=r"^t\.log:1: field 'service' is missing"):
        tree_of(json.dumps({k: v for k, v in good.items() if k != "service"}), "spans")


def test_real_span_log_from_libs_service(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    log = SpanLog(str(path), service="crawler")
    with log.span("request"):
        with log.span("parse"):
            pass
        with log.span("fetch", host="h1.sim.test"):
            pass
    log.close()
    lines = path.read_text().splitlines()
    for line in lines:
        VALIDATOR.validate(json.loads(line))
    tree, _ = tree_of("\n".join(lines) + "\n")
    assert {"request", "request;parse", "request;fetch"} == set(paths(tree))


def test_roots_sharing_a_trace_id_do_not_collide() -> None:
    # Two requests with the same client request id: two roots, one trace id, out of order.
    first = span_log(("GET /a", 0.5, 1.0, []), trace=7)
    second = span_log(("GET /b", 0.0, 1.0, []), trace=7)
    second[0]["span_id"] = "f" * 16
    tree, trace = tree_of(text_of(first + second))
    assert paths(tree)["GET /a"][0] == 1 and paths(tree)["GET /b"][0] == 1
    assert round(tree.total, 6) == 2.0 and trace.warnings == []


def test_concurrent_asyncio_spans_from_libs_service(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    log = SpanLog(str(path), service="crawler")

    async def fetch(host: str) -> None:
        async with log.span("fetch", host=host):
            await asyncio.sleep(0.01)

    async def request() -> None:
        async with log.span("request"):
            await asyncio.gather(*(fetch(f"h{i}.sim.test") for i in range(3)))

    async def main() -> None:
        await asyncio.gather(request(), request())

    asyncio.run(main())
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 8
    for line in lines:
        VALIDATOR.validate(json.loads(line))
    tree, trace = tree_of("\n".join(lines) + "\n")
    functions = {s.name: s for s in tree.functions()}
    assert functions["request"].calls == 2 and functions["fetch"].calls == 6
    assert trace.warnings == []


@st.composite
def span_trees(draw: st.DrawFn, depth: int = 0) -> Spec:
    """A random span tree in integer time: children laid out one after another (touching is
    allowed: half-open intervals) inside their parent."""
    children: list[Spec] = []
    cursor = 0
    if depth < 4:
        for _ in range(draw(st.integers(0, 3))):
            cursor += draw(st.integers(0, 3))
            child = draw(span_trees(depth + 1))
            children.append(_shift(child, cursor))
            cursor += child[2]
    dur = cursor + draw(st.integers(0, 3))
    return (draw(st.sampled_from(["get", "fetch", "parse"])), 0, dur, children)


def _shift(spec: Spec, by: float) -> Spec:
    name, start, dur, children = spec
    return (name, start + by, dur, [_shift(c, by) for c in children])


def _oracle(spec: Spec, prefix: str = "") -> dict[str, list[float]]:
    name, _, dur, children = spec
    path = prefix + name
    result: dict[str, list[float]] = {}
    for child in children:
        for key, (calls, incl, excl) in _oracle(child, path + ";").items():
            entry = result.setdefault(key, [0, 0, 0])
            entry[0] += calls
            entry[1] += incl
            entry[2] += excl
    entry = result.setdefault(path, [0, 0, 0])
    entry[0] += 1
    entry[1] += dur
    entry[2] += dur - sum(c[2] for c in children)
    return result


@settings(max_examples=100, deadline=None)
@given(span_trees())
def test_random_span_trees_rebuild_exactly(spec: Spec) -> None:
    tree, trace = tree_of(text_of(span_log(spec, base=0.0)))
    expected = {p: (int(c), float(i), float(e)) for p, (c, i, e) in _oracle(spec).items()}
    assert paths(tree) == expected
    assert trace.warnings == []
