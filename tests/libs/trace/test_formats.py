"""Every input format parses to the expected call tree, and auto-detection picks it."""

from __future__ import annotations

import json

import pytest

from libs.trace import FormatError, NegativeDuration, TimeWentBack, TraceError

from .tracetext import paths, read, tree_of

TREE_TEXT = """\
main 10
  parse 3
    read 1
  compute 6
    parse 2
"""

SAMPLES_TEXT = "\n".join(
    json.dumps(record)
    for record in [
        {"ts": 0.0, "stack": ["main", "load"]},
        {"ts": 1.0, "stack": ["main", "load", "read"]},
        {"ts": 2.0, "stack": ["main", "work"], "thread": "main"},
        {"ts": 2.5, "stack": ["poll"], "thread": "io"},
        {"ts": 3.0, "stack": ["main"]},
        {"ts": 3.5, "stack": [], "thread": "io"},
        {"ts": 4.0, "stack": ["main", "work"]},
    ]
)

CASES = {
    "startend": "main:start:0\nf:start:1\nf:end:3\nmain:end:4\n",
    "phase": "0 main B\n1 f B\n3 f E\n4 main E\n",
    "collapsed": "main;f 2\nmain 2\n",
    "tree": "main 4\n  f 2\n",
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_each_text_format_gives_the_same_tree(fmt: str) -> None:
    tree, trace = tree_of(CASES[fmt])
    assert trace.format == fmt
    assert {p: v[1:] for p, v in paths(tree).items()} == {"main": (4.0, 2.0), "main;f": (2.0, 2.0)}


def test_detects_json_formats() -> None:
    assert read(SAMPLES_TEXT).format == "samples"
    span = {"ts": 1, "dur": 1, "name": "x", "trace_id": "a" * 32, "span_id": "b" * 16, "parent_id": None}
    assert read(json.dumps({**span, "service": "s"})).format == "spans"


def test_undetectable_input_is_a_trace_error() -> None:
    with pytest.raises(TraceError, match="cannot tell the input format"):
        read("hello world\n")
    with pytest.raises(TraceError, match="empty"):
        read("\n# only a comment\n")


def test_collapsed_keeps_per_path_counts_whatever_the_line_order() -> None:
    text = "a;b;c 3\nx 1\na;b 2\na;b;c 4\n"
    tree, trace = tree_of(text)
    assert trace.unit == "samples"
    got = {p: v[1:] for p, v in paths(tree).items()}
    assert got == {"a": (9.0, 0.0), "a;b": (9.0, 2.0), "a;b;c": (7.0, 7.0), "x": (1.0, 1.0)}


def test_collapsed_empty_stack_is_idle_time_owned_by_no_frame() -> None:
    # py-spy can record an empty stack while the interpreter starts or exits.
    tree, _ = tree_of("a;b 2\n 3\na 1\n", "collapsed")
    assert paths(tree) == {"a": (2, 3.0, 1.0), "a;b": (1, 2.0, 2.0)}
    assert tree.total == 3.0 and (tree.start, tree.end) == (0, 6)


def test_collapsed_frames_may_hold_spaces_and_colons() -> None:
    tree, _ = tree_of("<module> (prog.py:14);main (prog.py:13) 5\n", "collapsed")
    assert "<module> (prog.py:14);main (prog.py:13)" in paths(tree)


def test_collapsed_bad_count_names_the_line() -> None:
    with pytest.raises(FormatError, match=r"^t\.log:2: "):
        tree_of("a;b 1\na;b many\n", "collapsed")
    with pytest.raises(FormatError, match=r"^t\.log:1: empty frame"):
        tree_of("a;;b 1\n", "collapsed")


def test_timestamped_samples_hold_each_stack_until_the_next_sample() -> None:
    tree, trace = tree_of(SAMPLES_TEXT)
    assert trace.unit == "s"
    got = {p: v[1:] for p, v in paths(tree).items()}
    # main thread: the last sample (t=4) is held for the gap before it (1 s), so main ends at 5.
    assert got == {
        "main": (5.0, 1.0),
        "main;load": (2.0, 1.0),
        "main;load;read": (1.0, 1.0),
        "main;work": (2.0, 2.0),
        "poll": (1.0, 1.0),
    }


def test_samples_going_back_in_time_name_the_line() -> None:
    text = '{"ts": 2, "stack": ["a"]}\n{"ts": 1, "stack": ["b"]}\n'
    with pytest.raises(TimeWentBack, match=r"^t\.log:2: "):
        tree_of(text)


def test_samples_with_bad_fields_name_the_field() -> None:
    with pytest.raises(FormatError, match=r"^t\.log:1: field 'stack'"):
        tree_of('{"ts": 1, "stack": "a"}\n', "samples")
    with pytest.raises(FormatError, match=r"^t\.log:1: field 'ts'"):
        tree_of('{"ts": "1", "stack": ["a"]}\n', "samples")


def test_indented_tree_lays_children_out_inside_their_parent() -> None:
    tree, trace = tree_of(TREE_TEXT)
    assert trace.format == "tree"
    assert paths(tree) == {
        "main": (1, 10.0, 1.0),
        "main;parse": (1, 3.0, 2.0),
        "main;parse;read": (1, 1.0, 1.0),
        "main;compute": (1, 6.0, 4.0),
        "main;compute;parse": (1, 2.0, 2.0),
    }
    assert {s.name: s.inclusive for s in tree.functions()}["parse"] == 5.0


def test_tree_children_longer_than_parent_is_a_negative_duration() -> None:
    text = "main 5\n  a 3\n  b 4\n"
    with pytest.raises(NegativeDuration, match=r"^t\.log:3: children of 'main' \(line 1\)"):
        tree_of(text)
    tree, trace = tree_of(text, lenient=True)
    assert paths(tree)["main;b"] == (1, 2.0, 2.0)
    assert [(w.kind, w.line) for w in trace.warnings] == [("NegativeDuration", 3)]


def test_tree_dedent_to_no_open_level_names_the_line() -> None:
    with pytest.raises(FormatError, match=r"^t\.log:3: dedent to column 1"):
        tree_of("a 10\n    b 5\n c 3\n", "tree")


def test_tree_tabs_count_as_four_spaces() -> None:
    tree, _ = tree_of("a 10\n\tb 5\n    c 1\n", "tree")
    assert set(paths(tree)) == {"a", "a;b", "a;c"}


def test_collapsed_input_starting_with_an_empty_stack_is_detected() -> None:
    # Live py-spy output may begin with idle samples (" 2": no frames) taken at start-up.
    tree, trace = tree_of(" 2\nmain;f 3\n 1\nmain 1\n")
    assert trace.format == "collapsed"
    assert paths(tree) == {"main": (2, 4.0, 1.0), "main;f": (1, 3.0, 3.0)}  # idle between: 2 calls
    assert tree.total == 4.0
    assert read(" 2\n\n 5\n").format == "collapsed"  # idle samples only
    assert read(" 2\nmain:start:0\nmain:end:1\n").format == "startend"  # the parser names line 1
