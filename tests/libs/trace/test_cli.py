"""The CLI: every output through -o, stdin as '-', auto-detection, exit 2 with exactly one
line on bad input (never a traceback), lenient warnings, and no half-written output files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from libs.trace.cli import run

DATA = Path(__file__).parent / "data"
GOOD = "main:start:0\nf:start:1\nf:end:3\ng:start:3\ng:end:4\nmain:end:10\n"
BROKEN = "main:start:0\nf:start:1\nmain:end:3\n"


def cli(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run(list(argv), io.StringIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


def subprocess_cli(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "libs.trace", *argv], input=stdin, capture_output=True, text=True, timeout=60
    )


def test_help_lists_commands_and_options() -> None:
    top = subprocess_cli("--help")
    assert top.returncode == 0 and "report" in top.stdout and "convert" in top.stdout
    sub = subprocess_cli("convert", "--help")
    for option in ("--format", "--to", "--lenient", "--sort", "--top", "-o", "spans", "speedscope", "svg"):
        assert option in sub.stdout


def test_bad_input_exits_2_with_one_line_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.log"
    path.write_text(BROKEN)
    result = subprocess_cli("report", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {path}:3: end of 'main' (begun line 1) while 'f'")


def test_stdin_dash_and_auto_detection_in_a_real_process() -> None:
    result = subprocess_cli("report", "-", "--to", "collapsed", stdin=GOOD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["main 7000000", "main;f 2000000", "main;g 1000000"]


@pytest.mark.parametrize(
    "argv",
    [
        ("report", "/no/such/file"),
        ("report", "-", "--to", "pdf"),
        ("report", "-", "--top", "0"),
        ("report", "-", "--sample-interval", "-1"),
        ("convert", "-"),  # --to is required for convert
        ("frobnicate",),
        ("report", "-", "--format", "startend"),  # empty stdin as start/end: nothing to report is fine
    ],
)
def test_usage_and_io_errors_are_one_line(argv: tuple[str, ...]) -> None:
    code, out, err = cli(*argv)
    if argv[-1] == "startend":
        assert code == 0 and "total 0" in out
        return
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_non_utf8_input_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bin.log"
    path.write_bytes(b"main:start:0\n\xff\xfe:end:1\n")
    code, _, err = cli("report", str(path))
    assert code == 2 and err.count("\n") == 1 and "UTF-8" in err


def test_undetectable_input_is_one_line() -> None:
    code, _, err = cli("report", "-", stdin="hello there\n")
    expected = (
        "error: <stdin>: cannot tell the input format from its first line 'hello there'; pass --format\n"
    )
    assert (code, err) == (2, expected)


def test_report_sorts_and_limits() -> None:
    code, out, _ = cli("report", "-", "--sort", "exclusive", "--top", "1", stdin=GOOD)
    assert code == 0
    lines = out.splitlines()
    assert lines[2].split()[0] == "main" and lines[-1].endswith("(2 not shown)")


def test_lenient_repairs_and_warns_on_stderr() -> None:
    code, out, err = cli("report", "-", "--lenient", stdin=BROKEN)
    assert code == 0
    assert "main" in out and "f" in out
    warnings = err.splitlines()
    assert warnings[0] == (
        "warning: <stdin>:3: end of 'main' (begun line 1) while 'f' (begun line 2) is still open"
        " [CrossedNesting]"
    )
    assert warnings[-1] == "warning: 1 problems repaired (--lenient)"


@pytest.mark.parametrize("to", ["table", "chrome", "collapsed", "speedscope", "svg"])
def test_convert_writes_every_output_format(to: str, tmp_path: Path) -> None:
    target = tmp_path / f"out.{to}"
    code, out, err = cli("convert", str(DATA / "pyspy_small_program.txt"), "--to", to, "-o", str(target))
    assert (code, out, err) == (0, "", "")
    text = target.read_text()
    if to in ("chrome", "speedscope"):
        document = json.loads(text)
        assert ("traceEvents" in document) if to == "chrome" else (document["profiles"][0]["unit"] == "none")
    elif to == "svg":
        assert ET.fromstring(text).tag.endswith("svg")
    elif to == "collapsed":
        assert sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines()) == 399
    else:
        assert "spin (small_program.py:17)" in text


def test_chrome_uses_sample_interval_for_collapsed_input(tmp_path: Path) -> None:
    code, out, _ = cli(
        "convert", "-", "--to", "chrome", "--sample-interval", "0.005", stdin="main;f 3\nmain 1\n"
    )
    assert code == 0
    stamps = [e["ts"] for e in json.loads(out)["traceEvents"] if e["ph"] in "BE"]
    assert max(stamps) == 4 * 5000.0  # 4 samples of 5 ms, in microseconds


def test_failed_conversion_leaves_existing_output_untouched(tmp_path: Path) -> None:
    source = tmp_path / "broken.log"
    source.write_text(BROKEN)
    target = tmp_path / "trace.json"
    target.write_text("previous good output")
    code, _, err = cli("convert", str(source), "--to", "chrome", "-o", str(target))
    assert code == 2 and err.startswith(f"error: {source}:3:")
    assert target.read_text() == "previous good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.log", "trace.json"]  # no temp file left


def test_spans_and_time_units_through_the_cli(tmp_path: Path) -> None:
    code, out, _ = cli("report", "-", "--time-unit", "ms", stdin=GOOD)
    assert code == 0 and "inclusive (ms)" in out
    record = {
        "ts": 1.0,
        "dur": 0.5,
        "name": "request",
        "trace_id": "ab" * 16,
        "span_id": "cd" * 8,
        "parent_id": None,
        "service": "crawler",
    }
    code, out, _ = cli("report", "-", stdin=json.dumps(record) + "\n")
    assert code == 0 and "request" in out and "inclusive (s)" in out


def test_reader_closing_the_pipe_early_is_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "long.log"
    path.write_text("".join(f"f{i % 7}:start:{i}\nf{i % 7}:end:{i + 1}\n" for i in range(20_000)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "libs.trace", "convert", str(path), "--to", "chrome"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline().startswith(b"{")
    proc.stdout.close()  # like `| head -1`
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b""


def test_lenient_reports_the_first_warnings_and_the_total() -> None:
    text = "main:start:0\n" + "".join(f"g{i}:end:1\n" for i in range(5_000)) + "main:end:2\n"
    code, out, err = cli("report", "-", "--lenient", stdin=text)
    assert code == 0 and "main" in out
    lines = err.splitlines()
    assert len(lines) == 22
    assert lines[0] == (
        "warning: <stdin>:2: end of 'g0' without a start (innermost open frame: 'main') [UnmatchedEnd]"
    )
    assert lines[-2] == "warning: ... and 4,980 more warnings (in all: 5,000 UnmatchedEnd)"
    assert lines[-1] == "warning: 5,000 problems repaired (--lenient)"
