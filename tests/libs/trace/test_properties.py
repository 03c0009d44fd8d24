"""Hypothesis properties over generated traces: the aggregates obey inclusive = exclusive +
children, match a brute-force oracle, are conserved by every output format, and collapsed
stacks round-trip; broken input never escapes as anything but a TraceError, and lenient mode
always yields a well-formed stream."""

from __future__ import annotations

import io
import json
import re
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.trace import CallTree, TraceError
from libs.trace.detect import FORMATS
from libs.trace.writers import chrome, collapsed, speedscope, svg, table

from .tracetext import RENDER, Op, paths, read, tree_of

NAMES = ("a", "b", "c")  # few names, so recursion (a inside a) is common
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def well_formed(draw: st.DrawFn, max_ops: int = 60) -> list[Op]:
    """A random well-formed trace with integer timestamps (exact in floats), equal
    timestamps included (steps of 0)."""
    ops: list[Op] = []
    stack: list[str] = []
    ts = 0
    for _ in range(draw(st.integers(0, max_ops))):
        ts += draw(st.integers(0, 5))
        if stack and draw(st.booleans()):
            ops.append((stack.pop(), "E", ts))
        else:
            name = draw(st.sampled_from(NAMES))
            stack.append(name)
            ops.append((name, "B", ts))
    while stack:
        ts += draw(st.integers(0, 5))
        ops.append((stack.pop(), "E", ts))
    return ops


def oracle(ops: list[Op]) -> dict[str, tuple[int, float, float]]:
    """Per call path (calls, inclusive, exclusive), computed frame by frame with no shared
    code: each frame's exclusive time is its interval minus its direct children's."""
    result: dict[str, list[float]] = {}
    open_frames: list[tuple[str, float, list[float]]] = []  # (path, begin, children's durations)
    for name, kind, ts in ops:
        if kind == "B":
            parent = open_frames[-1][0] + ";" if open_frames else ""
            open_frames.append((parent + name, ts, []))
        else:
            path, begin, children = open_frames.pop()
            duration = ts - begin
            entry = result.setdefault(path, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += duration
            entry[2] += duration - sum(children)
            if open_frames:
                open_frames[-1][2].append(duration)
    return {p: (int(c), float(i), float(e)) for p, (c, i, e) in result.items()}


@SETTINGS
@given(well_formed(), st.sampled_from(sorted(RENDER)))
def test_children_inclusive_plus_own_exclusive_is_own_inclusive(ops: list[Op], fmt: str) -> None:
    tree, _ = tree_of(RENDER[fmt](ops), fmt)
    assert tree.root.inclusive == sum(c.inclusive for c in tree.root.children.values())
    for _, node in tree.root.walk():
        assert node.exclusive >= 0
        assert node.exclusive + sum(c.inclusive for c in node.children.values()) == node.inclusive


@SETTINGS
@given(well_formed(), st.sampled_from(sorted(RENDER)))
def test_call_tree_matches_frame_by_frame_oracle(ops: list[Op], fmt: str) -> None:
    tree, _ = tree_of(RENDER[fmt](ops), fmt)
    assert paths(tree) == oracle(ops)


@SETTINGS
@given(well_formed())
def test_per_function_inclusive_never_exceeds_total(ops: list[Op]) -> None:
    tree, _ = tree_of(RENDER["startend"](ops), "startend")
    exclusive_sum = 0.0
    for stats in tree.functions():
        assert 0 <= stats.exclusive <= stats.inclusive <= tree.total
        exclusive_sum += stats.exclusive
    assert exclusive_sum == tree.total


def _top_level_time(events: list[tuple[str, float]]) -> float:
    """Sum of outermost frame durations from an ordered (open|close, at) list."""
    depth, begin, total = 0, 0.0, 0.0
    for kind, at in events:
        if kind == "open":
            if depth == 0:
                begin = at
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                total += at - begin
    return total


@SETTINGS
@given(well_formed())
def test_totals_are_conserved_across_output_formats(ops: list[Op]) -> None:
    text = RENDER["startend"](ops)
    tree, trace = tree_of(text, "startend", time_unit="us")  # us: collapsed weights are exact
    total = tree.total

    assert table.render(tree, trace.unit).splitlines()[-1].startswith(f"total {total:.6g} us")

    out = io.StringIO()
    collapsed.write(tree, out, unit=trace.unit)
    assert sum(int(line.rsplit(" ", 1)[1]) for line in out.getvalue().splitlines()) == total

    out = io.StringIO()
    chrome.write(read(text, "startend", time_unit="us").events, out, us_per_unit=1.0)
    timed = [e for e in json.loads(out.getvalue())["traceEvents"] if e["ph"] in "BE"]
    assert _top_level_time([("open" if e["ph"] == "B" else "close", e["ts"]) for e in timed]) == total

    doc = speedscope.document(read(text, "startend", time_unit="us").events, unit="us")
    events = [e for p in doc["profiles"] for e in p["events"]]
    assert _top_level_time([("open" if e["type"] == "O" else "close", e["at"]) for e in events]) == total

    picture = svg.render(tree, unit=trace.unit)
    assert re.search(r"<title>all — inclusive ([0-9.e+]+) us", picture).group(1) == f"{total:.6g}"


STACKS = st.dictionaries(
    st.lists(st.sampled_from(("main", "f", "g", "h (x.py:3)")), min_size=1, max_size=6).map(tuple),
    st.integers(1, 50),
    max_size=12,
)


@SETTINGS
@given(STACKS, st.randoms(use_true_random=False))
def test_collapsed_round_trip_keeps_every_stack_count(stacks: dict[tuple[str, ...], int], rnd) -> None:
    lines = [f"{';'.join(stack)} {count}" for stack, count in stacks.items()]
    rnd.shuffle(lines)
    tree, trace = tree_of("\n".join(lines) + "\n", "collapsed")
    out = io.StringIO()
    collapsed.write(tree, out, unit=trace.unit)
    back = Counter()
    for line in out.getvalue().splitlines():
        stack, count = line.rsplit(" ", 1)
        back[tuple(stack.split(";"))] += int(count)
    assert back == Counter(stacks)
    assert tree.total == sum(stacks.values())


RAW_OPS = st.lists(
    st.tuples(st.sampled_from(NAMES), st.sampled_from("BE"), st.integers(0, 20)),
    max_size=40,
)


def _assert_well_formed(events) -> None:
    stacks: dict[str, list[str]] = {}
    last: dict[str, float] = {}
    for ev in events:
        stack = stacks.setdefault(ev.track, [])
        assert ev.ts >= last.get(ev.track, ev.ts)
        last[ev.track] = ev.ts
        if ev.kind == "B":
            assert ev.depth == len(stack)
            stack.append(ev.name)
        else:
            assert stack and stack[-1] == ev.name and ev.depth == len(stack) - 1
            stack.pop()
    assert all(not stack for stack in stacks.values())


@SETTINGS
@given(RAW_OPS, st.sampled_from(sorted(RENDER)))
def test_lenient_always_yields_a_well_formed_stream(ops: list[Op], fmt: str) -> None:
    text = RENDER[fmt](ops)
    lenient = read(text, fmt, lenient=True)
    repaired = list(lenient.events)
    _assert_well_formed(repaired)
    try:
        strict = [(e.kind, e.ts, e.name, e.depth) for e in read(text, fmt).events]
    except TraceError as exc:
        assert exc.line >= 1 and str(exc).startswith(f"t.log:{exc.line}: ")
        assert lenient.warnings  # strict refused it, so lenient had something to repair
    else:
        assert lenient.warnings == []
        assert strict == [(e.kind, e.ts, e.name, e.depth) for e in repaired]


@SETTINGS
@given(
    st.lists(st.text(alphabet=st.sampled_from(' \t;:{}[]"0123456789.-abBE#\n'), max_size=30), max_size=8),
    st.sampled_from(FORMATS),
    st.booleans(),
)
def test_garbage_input_only_ever_raises_trace_error(lines: list[str], fmt: str, lenient: bool) -> None:
    try:
        CallTree.from_events(read("\n".join(lines), fmt, lenient=lenient).events)
    except TraceError:
        assert not lenient, "lenient mode repairs or skips, it never raises"


def _samples_text(ops: list[Op]) -> str:
    """The same trace as timestamped stack samples: one sample per distinct timestamp, holding
    the stack as it is after every event at that timestamp."""
    stack: list[str] = []
    samples: list[tuple[float, list[str]]] = []
    for name, kind, ts in ops:
        if kind == "B":
            stack.append(name)
        else:
            stack.pop()
        if samples and samples[-1][0] == ts:
            samples[-1] = (ts, list(stack))
        else:
            samples.append((ts, list(stack)))
    return "".join(json.dumps({"ts": ts, "stack": s}) + "\n" for ts, s in samples)


def _tree_text(tree: CallTree) -> str:
    return "".join(
        f"{'  ' * (len(path) - 1)}{path[-1]} {node.inclusive:g}\n" for path, node in tree.root.walk()
    )


def _times(tree: CallTree) -> dict[str, tuple[float, float]]:
    """Per path (inclusive, exclusive), leaving out paths that own no time: a zero-length frame
    is an event but not a sample, so sampled inputs cannot show it."""
    return {p: (i, e) for p, (_, i, e) in paths(tree).items() if i}


@SETTINGS
@given(well_formed())
def test_times_are_conserved_across_input_formats(ops: list[Op]) -> None:
    reference, _ = tree_of(RENDER["startend"](ops), "startend")
    sampled, _ = tree_of(_samples_text(ops), "samples")
    assert _times(sampled) == _times(reference)
    indented, _ = tree_of(_tree_text(reference), "tree")
    assert _times(indented) == _times(reference)


@SETTINGS
@given(well_formed())
def test_descend_visits_the_nodes_of_walk_in_order_at_their_depth(ops: list[Op]) -> None:
    tree, _ = tree_of(RENDER["startend"](ops), "startend")
    walked = [(len(path), node) for path, node in tree.root.walk()]
    descended = list(tree.root.descend())
    assert [d for d, _ in descended] == [d for d, _ in walked]
    assert all(a is b for (_, a), (_, b) in zip(descended, walked, strict=True))


@SETTINGS
@given(STACKS, st.randoms(use_true_random=False))
def test_collapsed_output_is_one_line_per_weighted_path_in_walk_order(
    stacks: dict[tuple[str, ...], int], rnd
) -> None:
    lines = [f"{';'.join(stack)} {count}" for stack, count in stacks.items()]
    rnd.shuffle(lines)
    tree, trace = tree_of("\n".join(lines) + "\n", "collapsed")
    out = io.StringIO()
    written = collapsed.write(tree, out, unit=trace.unit)
    walked = tree.root.walk()
    expected = [f"{';'.join(path)} {round(node.exclusive)}" for path, node in walked if node.exclusive]
    assert out.getvalue().splitlines() == expected and written == len(expected)
