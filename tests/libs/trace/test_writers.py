"""Outputs: table sorting, Chrome trace structure (what Perfetto needs), speedscope against
its file-format schema, collapsed stacks and a self-contained SVG flame graph."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from libs.trace import CallTree, Node
from libs.trace.writers import chrome, collapsed, speedscope, svg, table

from .tracetext import read, tree_of

TEXT = (
    "main:start:0\nload:start:0\nload:end:2\nwork:start:2\nwork:start:3\nwork:end:7\n"
    "<b&'x\">:start:7\n<b&'x\">:end:8\nwork:end:9\nmain:end:10\n"
)

# The speedscope file format (https://www.speedscope.app/file-format-schema.json), restated
# here for the evented profiles this tool writes: required fields, enums and event shapes.
SPEEDSCOPE_SCHEMA = {
    "type": "object",
    "required": ["$schema", "shared", "profiles"],
    "properties": {
        "$schema": {"enum": ["https://www.speedscope.app/file-format-schema.json"]},
        "shared": {
            "type": "object",
            "required": ["frames"],
            "properties": {
                "frames": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}},
                    },
                }
            },
        },
        "profiles": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "name", "unit", "startValue", "endValue", "events"],
                "properties": {
                    "type": {"enum": ["evented"]},
                    "name": {"type": "string"},
                    "unit": {
                        "enum": ["bytes", "microseconds", "milliseconds", "nanoseconds", "none", "seconds"]
                    },
                    "startValue": {"type": "number"},
                    "endValue": {"type": "number"},
                    "events": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["type", "frame", "at"],
                            "properties": {
                                "type": {"enum": ["O", "C"]},
                                "frame": {"type": "number"},
                                "at": {"type": "number"},
                            },
                        },
                    },
                },
            },
        },
        "name": {"type": "string"},
        "activeProfileIndex": {"type": "number"},
        "exporter": {"type": "string"},
    },
}


def test_table_sorts_and_truncates() -> None:
    tree, trace = tree_of(TEXT)
    text = table.render(tree, trace.unit, sort="exclusive", top=2)
    rows = [line.split()[0] for line in text.splitlines()[2:-1]]
    assert rows == ["work", "load"]  # exclusive 6 (4 + 2 recursive), then 2 (ties by name)
    assert text.splitlines()[-1] == "total 10 s in 4 functions (2 not shown)"
    by_calls = table.render(tree, trace.unit, sort="calls").splitlines()[2].split()[0]
    assert by_calls == "work"
    by_name = [line.split()[0] for line in table.render(tree, trace.unit, sort="name").splitlines()[2:-1]]
    assert by_name == sorted(by_name)
    with pytest.raises(ValueError):
        table.render(tree, trace.unit, sort="speed")


def test_table_shares_are_of_the_total() -> None:
    tree, trace = tree_of(TEXT)
    lines = {line.split()[0]: line.split() for line in table.render(tree, trace.unit).splitlines()[2:-1]}
    assert lines["main"][1:] == ["1", "10", "100.0%", "1", "10.0%"]
    assert lines["work"][1:] == ["2", "7", "70.0%", "6", "60.0%"]


def test_chrome_trace_is_balanced_per_thread_in_microseconds() -> None:
    out = io.StringIO()
    written = chrome.write(read(TEXT, time_unit="ms").events, out, us_per_unit=1e3)
    document = json.loads(out.getvalue())
    events = document["traceEvents"]
    threads = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert threads == {1: "main"}
    timed = [e for e in events if e["ph"] in ("B", "E")]
    assert len(timed) == written == 10  # the ten lines of TEXT
    stack: list[str] = []
    last = float("-inf")
    for e in timed:
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert e["ts"] >= last
        last = e["ts"]
        if e["ph"] == "B":
            stack.append(e["name"])
        else:
            assert stack.pop() == e["name"]
    assert stack == [] and last == 10_000.0  # 10 ms in microseconds


def test_speedscope_follows_the_file_format_schema() -> None:
    doc = speedscope.document(read(TEXT).events, unit="s", name="t")
    jsonschema.validate(doc, SPEEDSCOPE_SCHEMA)
    (profile,) = doc["profiles"]
    assert (profile["unit"], profile["startValue"], profile["endValue"]) == ("seconds", 0.0, 10.0)
    names = [f["name"] for f in doc["shared"]["frames"]]
    open_frames: list[int] = []
    for event in profile["events"]:
        if event["type"] == "O":
            open_frames.append(event["frame"])
        else:
            assert open_frames.pop() == event["frame"]  # speedscope rejects unbalanced closes
    assert open_frames == [] and names.count("work") == 1


def test_collapsed_output_reads_back_to_the_same_tree() -> None:
    tree, trace = tree_of(TEXT, time_unit="us")
    out = io.StringIO()
    collapsed.write(tree, out, unit=trace.unit)
    assert out.getvalue().splitlines() == [
        "main 1",
        "main;load 2",
        "main;work 2",
        "main;work;work 4",
        "main;work;<b&'x\"> 1",
    ]
    again, _ = tree_of(out.getvalue(), "collapsed")
    assert again.total == tree.total


def test_svg_flame_graph_is_self_contained_and_proportional() -> None:
    tree, trace = tree_of(TEXT)
    document = svg.render(tree, unit=trace.unit, title="t <1>")
    root = ET.fromstring(document)  # well-formed XML, names escaped
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    assert "<script" not in document and "href" not in document
    frames = {}
    for group in root.iter(f"{ns}g"):
        title = group.find(f"{ns}title").text
        rect = group.find(f"{ns}rect")
        frames[title.split(" — ")[0]] = (float(rect.get("width")), title, group.find(f"{ns}text"))
    assert set(frames) == {"all", "main", "load", "work", "<b&'x\">"}
    total_width = frames["all"][0]
    assert total_width == svg.WIDTH - 2 * svg.PAD
    assert frames["load"][0] / total_width == pytest.approx(0.2, abs=1e-3)
    assert frames["main"][2].text == "main"  # wide enough for a label
    assert "inclusive 10 s (100.00%)" in frames["main"][1]
    # work (7 units) and work;work (4 units) are separate frames, one above the other.
    work_titles = [t.text for t in root.iter(f"{ns}title") if t.text.startswith("work —")]
    assert [re.search(r"inclusive (\S+) s", t).group(1) for t in work_titles] == ["7", "4"]


def test_empty_trace_renders_without_dividing_by_zero() -> None:
    tree = CallTree()
    assert "total 0" in table.render(tree, "s")
    ET.fromstring(svg.render(tree, unit="s"))


@pytest.mark.timeout(120)
def test_deep_stacks_are_written_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    # One sample 50,000 frames deep. Writing a path per node (Node.walk) is O(depth) per node,
    # O(depth^2) in all: 15-60 s per writer at depth 100k. The writers keep the path themselves.
    depth = 50_000
    line = ";".join(f"f{i % 10}" for i in range(depth)) + " 3\n"
    tree, trace = tree_of(line, "collapsed")

    def quadratic(self: object) -> None:
        raise AssertionError("Node.walk builds a path per node: O(depth^2) on a deep stack")

    monkeypatch.setattr(Node, "walk", quadratic)
    out = io.StringIO()
    assert collapsed.write(tree, out, unit=trace.unit) == 1
    assert out.getvalue() == line
    picture = svg.render(tree, unit=trace.unit)
    # Every frame is drawn (all have the full width): the root plus one row per stack level.
    assert picture.count("<rect ") == depth + 2  # + the background
    assert f'height="{(depth + 1) * svg.ROW + 3 * svg.PAD + svg.FONT}"' in picture
