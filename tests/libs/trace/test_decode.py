"""Reading bytes: strict UTF-8 with a bad byte named by file, line, offset and column; line
breaks as a text-mode file reads them, at any block boundary; a byte order mark dropped."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.trace import CallTree, FormatError, read_trace
from libs.trace.decode import utf8_lines
from libs.trace.errors import Diagnostics

from .test_cli import cli
from .tracetext import RENDER, paths

SETTINGS = settings(max_examples=200, deadline=None)
BOM = "\ufeff"

# Line text without line breaks of any kind (\r, \n and the ones only str.splitlines knows,
# which a text-mode file does not split on and neither must we).
LINE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
BREAK = st.sampled_from(["\n", "\r\n", "\r"])


def _text_mode_lines(data: bytes) -> list[str]:
    """What a text-mode file with universal newlines reads, line endings made "\\n"."""
    return list(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=None))


def _normalised(lines: list[str]) -> list[str]:
    return [line.rstrip("\r\n") + "\n" if line.endswith(("\r", "\n")) else line for line in lines]


@SETTINGS
@given(st.lists(st.tuples(LINE, BREAK)), LINE, st.integers(1, 9))
def test_lines_are_those_of_a_text_mode_file_at_any_block_size(
    body: list[tuple[str, str]], tail: str, block_size: int
) -> None:
    text = "".join(line + end for line, end in body) + tail
    data = text.encode()
    got = list(utf8_lines(io.BytesIO(data), Diagnostics(), block_size=block_size))
    assert "".join(got) == text  # nothing lost, nothing added, endings kept
    assert _normalised(got) == _text_mode_lines(data)


BAD_LEAD = st.sampled_from([0x80, 0xBF, 0xC0, 0xC2, 0xE2, 0xF0, 0xF8, 0xFF])


@SETTINGS
@given(st.lists(LINE, min_size=1, max_size=8), st.data(), BAD_LEAD, st.integers(1, 9))
def test_a_bad_byte_is_named_by_line_offset_and_column(
    lines: list[str], data: st.DataObject, bad: int, block_size: int
) -> None:
    row = data.draw(st.integers(0, len(lines) - 1), label="row")
    column = data.draw(st.integers(0, len(lines[row])), label="character")
    before = b"".join(line.encode() + b"\n" for line in lines[:row])
    head = lines[row][:column].encode()
    raw = before + head + bytes([bad]) + lines[row][column:].encode() + b"\n"
    raw += b"".join(line.encode() + b"\n" for line in lines[row + 1 :])
    with pytest.raises(FormatError) as caught:
        list(utf8_lines(io.BytesIO(raw), Diagnostics(source="x.log"), block_size=block_size))
    message = (
        f"x.log:{row + 1}: not UTF-8 text: byte 0x{bad:02x} at byte offset {len(before) + len(head)} "
        f"(column {len(head) + 1}): "
    )
    assert str(caught.value).startswith(message)
    assert caught.value.line == row + 1
    # Lenient: that line alone is dropped (read as blank), every other line is kept in place.
    diag = Diagnostics(source="x.log", lenient=True)
    got = list(utf8_lines(io.BytesIO(raw), diag, block_size=block_size))
    assert got == [line + "\n" if i != row else "\n" for i, line in enumerate(lines)]
    assert [(w.kind, w.line) for w in diag.warnings] == [("FormatError", row + 1)]


def test_a_bad_byte_in_a_big_file_is_named_by_its_line_not_a_block_offset(tmp_path: Path) -> None:
    # Beyond the first block of the reader (64 KiB): text-mode files said "at byte 3" here.
    good = "".join(f"f{i % 7}:start:{i}\nf{i % 7}:end:{i + 1}\n" for i in range(20_000))
    path = tmp_path / "big.log"
    path.write_bytes(good.encode() + b"g:st\xe9rt:1\n")
    code, out, err = cli("report", str(path))
    offset = len(good.encode()) + 4
    expected = (
        f"error: {path}:40001: not UTF-8 text: byte 0xe9 at byte offset {offset} (column 5): "
        "invalid continuation byte\n"
    )
    assert (code, out, err) == (2, "", expected)


def test_a_bad_byte_on_stdin_of_a_real_process_is_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "libs.trace", "report", "-"],
        input=b"main:start:0\nmain:end:1\n\xff\n",
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2 and result.stdout == b""
    expected = b"error: <stdin>:3: not UTF-8 text: byte 0xff at byte offset 24 (column 1): invalid start byte"
    assert result.stderr == expected + b"\n"


def test_lenient_skips_a_line_that_is_not_utf8_and_counts_the_rest_right(tmp_path: Path) -> None:
    path = tmp_path / "mixed.log"
    path.write_bytes(b"main:start:0\nf\xff:start:1\nf:start:1\nf:end:3\nmain:end:5\n")
    code, out, err = cli("report", str(path), "--to", "collapsed", "--lenient")
    assert code == 0
    assert out.splitlines() == ["main 3000000", "main;f 2000000"]
    assert err.splitlines()[0].startswith(f"warning: {path}:2: not UTF-8 text: byte 0xff at byte offset 14")


# ---- the byte order mark -------------------------------------------------------------------

SPAN = {
    "ts": 1.0,
    "dur": 0.5,
    "name": "request",
    "trace_id": "ab" * 16,
    "span_id": "cd" * 8,
    "parent_id": None,
    "service": "crawler",
}
WITH_BOM = {
    "startend": "main:start:0\nmain:end:1\n",
    "phase": "0 main B\n1 main E\n",
    "collapsed": "main;f 3\nmain 1\n",
    "samples": '{"ts": 0, "stack": ["main"]}\n{"ts": 1, "stack": ["main", "f"]}\n',
    "tree": "main 3\n  f 1\n",
    "spans": json.dumps({**SPAN, "name": "main"}) + "\n",
}


@pytest.mark.parametrize("fmt", sorted(WITH_BOM))
@pytest.mark.parametrize("as_bytes", [True, False], ids=["bytes", "text"])
@pytest.mark.parametrize("given_format", [True, False], ids=["format", "auto"])
def test_a_byte_order_mark_is_not_part_of_the_first_frame(
    fmt: str, as_bytes: bool, given_format: bool
) -> None:
    text = WITH_BOM[fmt]
    source = io.BytesIO((BOM + text).encode()) if as_bytes else io.StringIO(BOM + text)
    trace = read_trace(source, format=fmt if given_format else "auto")
    assert trace.format == fmt
    tree = CallTree.from_events(trace.events)
    reference = CallTree.from_events(read_trace(io.StringIO(text), format=fmt).events)
    assert paths(tree) == paths(reference) and "main" in paths(tree)


def test_a_byte_order_mark_on_stdin_of_a_real_process_is_dropped() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "libs.trace", "report", "-", "--to", "collapsed"],
        input=BOM.encode() + b"main;f 3\nmain 1\n",
        capture_output=True,
        timeout=60,
    )
    assert (result.returncode, result.stderr) == (0, b"")
    assert result.stdout.decode().splitlines() == ["main 1", "main;f 3"]


@SETTINGS
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b"]), st.sampled_from("BE"), st.integers(0, 9)), max_size=12),
    st.sampled_from(sorted(RENDER)),
)
def test_only_a_leading_bom_is_dropped_and_nothing_else_changes(ops: list, fmt: str) -> None:
    text = RENDER[fmt](sorted(ops, key=lambda op: op[2]))
    plain = read_trace(io.StringIO(text), format=fmt, lenient=True).events
    expected = [(e.kind, e.ts, e.name, e.line) for e in plain]
    with_bom = read_trace(io.BytesIO((BOM + text).encode()), format=fmt, lenient=True).events
    assert [(e.kind, e.ts, e.name, e.line) for e in with_bom] == expected
