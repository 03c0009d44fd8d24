"""The stack machine: each validation error names its line (and file); lenient mode repairs
by the documented rules; equal timestamps and recursion follow the declared convention."""

from __future__ import annotations

import pytest

from libs.trace import (
    CrossedNesting,
    FormatError,
    MissingEnd,
    NegativeDuration,
    TimeWentBack,
    TraceError,
    UnmatchedEnd,
)
from libs.trace.stackdiff import StackDiffer

from .tracetext import RENDER, paths, tree_of

# Each broken trace: the ops, the error, the 1-based line it must name, words the message holds.
BROKEN = {
    "missing end": (
        [("main", "B", 0), ("f", "B", 1), ("f", "E", 2)],
        MissingEnd,
        1,
        "'main'",
    ),
    "end without start": (
        [("main", "B", 0), ("main", "E", 3), ("g", "E", 4)],
        UnmatchedEnd,
        3,
        "'g' without a start",
    ),
    "crossed nesting": (
        [("a", "B", 0), ("b", "B", 1), ("a", "E", 2), ("b", "E", 3)],
        CrossedNesting,
        3,
        "'b' (begun line 2) is still open",
    ),
    "negative duration": (
        [("a", "B", 5), ("a", "E", 3)],
        NegativeDuration,
        2,
        "before it begins at 5 (line 1)",
    ),
    "timestamp goes back": (
        [("a", "B", 5), ("b", "B", 3), ("b", "E", 6), ("a", "E", 7)],
        TimeWentBack,
        2,
        "goes back from 5",
    ),
}

# What lenient mode makes of each: the repaired call paths and the warnings (kind, line).
REPAIRED = {
    "missing end": (
        {"main": (1, 2.0, 1.0), "main;f": (1, 1.0, 1.0)},
        [("MissingEnd", 1)],
    ),
    "end without start": ({"main": (1, 3.0, 3.0)}, [("UnmatchedEnd", 3)]),
    "crossed nesting": (
        {"a": (1, 2.0, 1.0), "a;b": (1, 1.0, 1.0)},
        [("CrossedNesting", 3), ("UnmatchedEnd", 4)],
    ),
    "negative duration": ({"a": (1, 0.0, 0.0)}, [("NegativeDuration", 2)]),
    "timestamp goes back": (
        {"a": (1, 2.0, 1.0), "a;b": (1, 1.0, 1.0)},
        [("TimeWentBack", 2)],
    ),
}


@pytest.mark.parametrize("fmt", sorted(RENDER))
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_each_error_names_file_and_line(case: str, fmt: str) -> None:
    ops, error, line, words = BROKEN[case]
    with pytest.raises(error) as caught:
        tree_of(RENDER[fmt](ops), fmt)
    assert caught.value.line == line
    assert str(caught.value).startswith(f"t.log:{line}: ")
    assert words in str(caught.value)


@pytest.mark.parametrize("fmt", sorted(RENDER))
@pytest.mark.parametrize("case", sorted(REPAIRED))
def test_lenient_repairs_by_the_stated_rules(case: str, fmt: str) -> None:
    ops = BROKEN[case][0]
    expected_paths, expected_warnings = REPAIRED[case]
    tree, trace = tree_of(RENDER[fmt](ops), fmt, lenient=True)
    assert paths(tree) == expected_paths
    assert [(w.kind, w.line) for w in trace.warnings] == expected_warnings


def test_deepest_open_frames_are_auto_closed_at_the_last_timestamp() -> None:
    text = "a:start:0\nb:start:1\nc:start:2\nc:end:4\n"
    tree, trace = tree_of(text, lenient=True)
    assert paths(tree) == {"a": (1, 4.0, 1.0), "a;b": (1, 3.0, 1.0), "a;b;c": (1, 2.0, 2.0)}
    assert [(w.kind, w.line) for w in trace.warnings] == [("MissingEnd", 1), ("MissingEnd", 2)]


def test_unparseable_lines_name_their_line_and_are_dropped_when_lenient() -> None:
    text = "a:start:0\na:middle:1\na:end:x\na:end:2\n"
    with pytest.raises(FormatError, match=r"^t\.log:2: expected 'start' or 'end'"):
        tree_of(text, "startend")
    tree, trace = tree_of(text, "startend", lenient=True)
    assert paths(tree) == {"a": (1, 2.0, 2.0)}
    assert [(w.kind, w.line) for w in trace.warnings] == [("FormatError", 2), ("FormatError", 3)]


def test_equal_timestamps_give_empty_and_adjacent_frames() -> None:
    # [0, 0) is an empty call; [0, 5) then [5, 7) touch but do not overlap.
    text = "a:start:0\na:end:0\nb:start:0\nb:end:5\nc:start:5\nc:end:7\n"
    tree, _ = tree_of(text)
    assert paths(tree) == {"a": (1, 0.0, 0.0), "b": (1, 5.0, 5.0), "c": (1, 2.0, 2.0)}
    assert tree.total == 7.0


def test_recursion_is_one_frame_per_stack_position() -> None:
    text = "f:start:0\nf:start:1\nf:start:2\nf:end:3\nf:end:5\ng:start:6\ng:end:8\nf:end:10\n"
    tree, _ = tree_of(text)
    assert paths(tree) == {
        "f": (1, 10.0, 4.0),
        "f;f": (1, 4.0, 3.0),
        "f;f;f": (1, 1.0, 1.0),
        "f;g": (1, 2.0, 2.0),
    }
    by_name = {s.name: s for s in tree.functions()}
    # The outermost activation only: recursion never counts time twice.
    assert (by_name["f"].calls, by_name["f"].inclusive, by_name["f"].exclusive) == (3, 10.0, 8.0)


def test_an_end_closes_the_innermost_frame_of_its_name() -> None:
    # f -> g -> f: "f:end" closes the inner f (top of stack), not the outer one.
    text = "f:start:0\ng:start:1\nf:start:2\nf:end:3\ng:end:4\nf:end:5\n"
    tree, _ = tree_of(text)
    assert paths(tree) == {"f": (1, 5.0, 2.0), "f;g": (1, 3.0, 2.0), "f;g;f": (1, 1.0, 1.0)}


def test_sample_diff_ends_deepest_first_and_begins_shallowest_first() -> None:
    differ = StackDiffer()
    list(differ.advance(["a", "b", "c"], 0, 1))
    events = [(e.kind, e.name, e.depth, e.ts) for e in differ.advance(["a", "d", "e"], 4, 2)]
    assert events == [("E", "c", 2, 4), ("E", "b", 1, 4), ("B", "d", 1, 4), ("B", "e", 2, 4)]
    assert [(e.kind, e.name) for e in differ.close(6, 3)] == [("E", "e"), ("E", "d"), ("E", "a")]


def test_trace_error_is_the_base_of_every_input_error() -> None:
    for error in (FormatError, MissingEnd, UnmatchedEnd, CrossedNesting, NegativeDuration, TimeWentBack):
        assert issubclass(error, TraceError)


def test_lenient_keeps_the_first_warnings_and_counts_them_all() -> None:
    # 10,000 problems: the first 100 are kept (in input order), every one is counted.
    text = "main:start:0\n" + "".join(f"g{i}:end:1\n" for i in range(10_000)) + "main:end:2\n"
    tree, trace = tree_of(text, lenient=True)
    assert paths(tree) == {"main": (1, 2.0, 2.0)}
    assert trace.warning_count == 10_000
    assert [w.line for w in trace.warnings] == list(range(2, 102))
    assert trace.diagnostics.kinds == {"UnmatchedEnd": 10_000}
    _, none_kept = tree_of(text, lenient=True, max_warnings=0)
    assert none_kept.warnings == [] and none_kept.warning_count == 10_000
