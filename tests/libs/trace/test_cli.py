"""The CLI: every output through -o, stdin as '-', auto-detection, exit 2 with exactly one
line on bad input (never a traceback), lenient warnings, and no half-written output files."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

import libs.trace.cli as trace_cli
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


# ---- -o PATH: what is there decides how it is written --------------------------------------


def test_output_to_a_fifo_is_written_as_a_fifo_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    # A reader that never blocks: if the FIFO were replaced, it would read EOF, not hang.
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        code, out, err = cli("report", "-", "-o", str(fifo), stdin=GOOD)
        data = b""
        while chunk := os.read(reader, 1 << 16):
            data += chunk
    finally:
        os.close(reader)
    assert (code, out, err) == (0, "", "")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert data.decode().startswith("function") and "main" in data.decode()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.fifo"]


def test_output_to_a_character_device_is_written_not_replaced(tmp_path: Path) -> None:
    # A twin of /dev/null (char 1,3): as root `-o /dev/null` used to become a regular file.
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.close(os.open(null, os.O_WRONLY))
    except OSError as exc:
        pytest.skip(f"cannot make a usable device node here (needs root, a dev-enabled fs): {exc}")
    before = os.stat(null)
    code, out, err = cli("convert", "-", "--to", "chrome", "-o", str(null), stdin=GOOD)
    after = os.stat(null)
    assert (code, out, err) == (0, "", "")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_output_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("old")
    target.chmod(0o640)
    link = tmp_path / "link.txt"
    link.symlink_to("real.txt")
    code, _, err = cli("report", "-", "--to", "collapsed", "-o", str(link), stdin=GOOD)
    assert (code, err) == (0, "")
    assert link.is_symlink() and os.readlink(link) == "real.txt"
    assert target.read_text().splitlines()[0] == "main 7000000"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    # A dangling link: its target is created, the link stays.
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to("made.txt")
    code, _, err = cli("report", "-", "--to", "collapsed", "-o", str(dangling), stdin=GOOD)
    assert (code, err) == (0, "")
    assert dangling.is_symlink() and (tmp_path / "made.txt").read_text().startswith("main 7000000")
    names = ["dangling.txt", "link.txt", "made.txt", "real.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o664, 0o755])
def test_a_replaced_output_file_keeps_its_mode(mode: int, tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    target.chmod(mode)
    code, _, err = cli("report", "-", "-o", str(target), stdin=GOOD)
    assert (code, err) == (0, "")
    assert target.read_text().startswith("function")
    assert stat.S_IMODE(target.stat().st_mode) == mode


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077, 0o002])
def test_a_new_output_file_honours_the_umask(umask: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        code, _, err = cli("report", "-", "-o", str(tmp_path / "new.txt"), stdin=GOOD)
    finally:
        os.umask(old)
    assert (code, err) == (0, "")
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o666 & ~umask


def test_output_to_a_directory_or_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    code, _, err = cli("report", "-", "-o", str(tmp_path), stdin=GOOD)
    assert (code, err) == (2, f"error: {tmp_path}: Is a directory\n")
    missing = tmp_path / "no" / "out.txt"
    code, _, err = cli("report", "-", "-o", str(missing), stdin=GOOD)
    assert (code, err) == (2, f"error: {missing}: No such file or directory\n")
    assert list(tmp_path.iterdir()) == []


def _default_sigint() -> None:
    # A child of a background job inherits SIGINT ignored, and Python keeps it so; the test
    # wants the interactive case, where Ctrl-C interrupts.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_run_killed_mid_write_removes_its_temp_file(signum: int, tmp_path: Path) -> None:
    # The input is a FIFO we feed: after the first lines the run waits for more, mid-write
    # with its temp file open, until the signal comes. It waits on events (the FIFO opened,
    # the temp file there), polled within a bound; no sleep decides anything.
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "trace.json"
    target.write_text("previous good output")
    argv = ["convert", str(fifo), "--format", "startend", "--to", "chrome", "-o", str(target)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "libs.trace", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    writer = -1
    try:

        def wait_for(condition: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 60  # a bound for a stuck run, not a timing
            while not condition():
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, f"still waiting for {what}"
                time.sleep(0.01)

        def open_writer() -> bool:
            nonlocal writer
            try:  # non-blocking: ENXIO until the child has opened the FIFO to read
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                return False
            return True

        wait_for(open_writer, "the run to open its input")
        os.write(writer, b"main:start:0\nf:start:1\n")
        wait_for(lambda: len(os.listdir(out_dir)) == 2, "the temp file")
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if writer >= 0:
            os.close(writer)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signum  # ended by the signal, as a shell expects
    assert b"Traceback" not in err
    assert os.listdir(out_dir) == ["trace.json"]
    assert target.read_text() == "previous good output"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_counts_bytes_read_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trace_cli, "PROGRESS_EVERY", 1000)
    path = tmp_path / "long.log"
    path.write_text("".join(f"f{i % 7}:start:{i}\nf{i % 7}:end:{i + 1}\n" for i in range(2_000)))
    out, err = io.StringIO(), _Terminal()
    code = run(["report", str(path), "--to", "collapsed"], io.StringIO(), out, err)
    assert code == 0
    assert err.getvalue().startswith("\rread 0 MB") and err.getvalue().endswith(" MB\n")
    assert out.getvalue() == cli("report", str(path), "--to", "collapsed")[1]


def test_a_read_only_output_file_is_refused_not_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    target.chmod(0o444)
    if os.geteuid() == 0:  # root may write to any file: ask as a user would be answered
        real_access = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode: False if mode & os.W_OK else real_access(path, mode)
        )
    code, _, err = cli("report", "-", "-o", str(target), stdin=GOOD)
    assert (code, err) == (2, f"error: {target}: Permission denied\n")
    assert target.read_text() == "keep me"
