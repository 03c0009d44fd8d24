"""Command line: ``python -m libs.trace report|convert FILE ...``.

Exit status: 0 on success, 2 on bad input or usage (one line on stderr, never a traceback),
1 on an unexpected internal error, ended by the signal itself on SIGTERM/SIGINT/SIGHUP (after
removing the temp file of an output being written). Warnings of --lenient go to stderr, one per
line (the first 20, then the total).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import os
import secrets
import signal
import stat
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, BinaryIO, TextIO

from libs.service.cli import ArgumentParser, UsageError
from libs.trace.calltree import CallTree
from libs.trace.detect import FORMATS
from libs.trace.errors import TraceError
from libs.trace.events import UNITS_TO_MICROSECONDS
from libs.trace.pipeline import Trace, read_trace
from libs.trace.writers import chrome, collapsed, speedscope, svg, table

OUTPUTS = ("table", "chrome", "collapsed", "speedscope", "svg")
MAX_WARNINGS = 20
PROGRESS_EVERY = 64 << 20  # bytes of input between two progress updates on a terminal
# Signals that end a run: while an output file is written they remove its temp file first.
CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m libs.trace",
        description=(
            "Turn start/end logs, stack samples (py-spy raw), call trees and span logs into "
            "profiles: a per-function table, Chrome trace JSON (Perfetto), collapsed stacks "
            "(flamegraph.pl), speedscope JSON or an SVG flame graph. Intervals are half-open "
            "[start, end)."
        ),
        epilog=(
            "examples:\n"
            "  python -m libs.trace report profile.txt --strip-lines --sort exclusive --top 20\n"
            "  python -m libs.trace convert spans.jsonl --to chrome -o trace.json   # ui.perfetto.dev\n"
            "  python -m libs.trace convert run.log --to svg -o flame.svg\n"
            "  python -m libs.trace convert - --to collapsed < run.log | flamegraph.pl > flame.svg\n"
            "exit status: 0 ok, 2 bad input or usage (one line on stderr)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for command, help_text, default_to in (
        ("report", "print a per-function table (or another output) of a trace", "table"),
        ("convert", "convert a trace to another format", None),
    ):
        sub = commands.add_parser(command, help=help_text, description=help_text)
        sub.add_argument("input", help="input file, or - for stdin")
        sub.add_argument(
            "--format",
            default="auto",
            choices=("auto", *FORMATS),
            help="input format (default: auto-detect from the first lines)",
        )
        sub.add_argument(
            "--to",
            default=default_to,
            required=default_to is None,
            choices=OUTPUTS,
            help="output format" + (f" (default: {default_to})" if default_to else ""),
        )
        sub.add_argument("-o", "--output", default="-", help="output file (default: - for stdout)")
        sub.add_argument(
            "--lenient",
            action="store_true",
            help="repair broken input (auto-close open frames at the last timestamp, drop unmatched "
            "ends, close crossed frames, clamp timestamps that go back) and warn on stderr",
        )
        sub.add_argument(
            "--time-unit",
            default="s",
            choices=sorted(UNITS_TO_MICROSECONDS),
            help="unit of the timestamps of startend, phase and tree input (default: s)",
        )
        sub.add_argument(
            "--sample-interval",
            type=float,
            default=0.01,
            metavar="SECONDS",
            help="seconds per sample of collapsed input, for --to chrome (default: 0.01, "
            "py-spy's 100 Hz; use 0.005 for -r 200)",
        )
        sub.add_argument(
            "--strip-lines",
            action="store_true",
            help="fold py-spy frame names 'fn (file.py:12)' into 'fn (file.py)' (one row per function)",
        )
        sub.add_argument(
            "--sort",
            default="inclusive",
            choices=table.SORT_KEYS,
            help="table order (default: inclusive)",
        )
        sub.add_argument("--top", type=int, default=None, metavar="N", help="table: show the first N rows")
    return parser


class _Progress(io.RawIOBase):
    """A binary input that reports how much of it has been read on a terminal's stderr, so
    long inputs show they are moving."""

    def __init__(self, raw: io.BufferedIOBase | io.RawIOBase, stream: TextIO) -> None:
        super().__init__()
        self.raw = raw
        self.stream = stream
        self.done = 0
        self.next = PROGRESS_EVERY

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        readinto = getattr(self.raw, "readinto1", None) or self.raw.readinto
        count = readinto(buffer)
        self.done += count
        if self.done >= self.next or (not count and self.next > PROGRESS_EVERY):
            self.next = self.done + PROGRESS_EVERY if count else float("inf")  # type: ignore[assignment]
            self.stream.write(f"\rread {self.done / 1e6:,.0f} MB" + ("" if count else "\n"))
            self.stream.flush()
        return count


def _write(trace: Trace, args: argparse.Namespace, out: TextIO) -> None:
    unit = trace.unit
    if args.to in ("chrome", "speedscope"):
        if args.to == "chrome":
            scale = args.sample_interval * 1e6 if unit == "samples" else UNITS_TO_MICROSECONDS[unit]
            chrome.write(trace.events, out, us_per_unit=scale, name=args.input)
        else:
            speedscope.write(trace.events, out, unit=unit, name=args.input)
        return
    tree = CallTree.from_events(trace.events)
    if args.to == "table":
        out.write(table.render(tree, unit, sort=args.sort, top=args.top))
    elif args.to == "collapsed":
        collapsed.write(tree, out, unit=unit)
    else:
        out.write(svg.render(tree, unit=unit, title=args.input))


def run(argv: Sequence[str] | None, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.top is not None and args.top < 1:
            raise UsageError(f"--top: expected a positive integer, got {args.top}")
        if args.sample_interval <= 0:
            raise UsageError(f"--sample-interval: expected a positive number, got {args.sample_interval}")
        source = "<stdin>" if args.input == "-" else args.input
        # Input is read as bytes and decoded here (decode.py), so a byte that is not UTF-8 is
        # reported with its line and offset; a text stream without .buffer (tests) is read as is.
        opened: contextlib.AbstractContextManager[BinaryIO | TextIO]
        if args.input == "-":
            opened = contextlib.nullcontext(getattr(stdin, "buffer", stdin))  # left open
        else:
            opened = open(args.input, "rb")  # noqa: SIM115 (closed by the with below)
        with opened as lines:
            shown = stderr.isatty() and isinstance(lines, io.BufferedIOBase | io.RawIOBase)
            trace = read_trace(
                _Progress(lines, stderr) if shown else lines,  # type: ignore[arg-type]
                format=args.format,
                source=source,
                lenient=args.lenient,
                time_unit=args.time_unit,
                strip_lines=args.strip_lines,
            )
            if args.output == "-":
                _write(trace, args, stdout)
                stdout.flush()
            else:
                write_output(args.output, lambda out: _write(trace, args, out))
            _report_warnings(trace, stderr)
        return 0
    except UsageError as exc:
        stderr.write(f"error: {exc} (see python -m libs.trace --help)\n")
    except TraceError as exc:
        stderr.write(f"error: {exc}\n")
    except BrokenPipeError:
        raise  # the reader went away (| head): not an input error, main() ends quietly
    except UnicodeDecodeError as exc:
        stderr.write(f"error: input is not UTF-8 text: {exc.reason} at byte {exc.start}\n")
    except OSError as exc:
        stderr.write(f"error: {exc.filename or ''}: {exc.strerror or exc}\n")
    return 2


class Interrupted(BaseException):
    """A termination signal arrived while an output file was being written; its temp file is
    gone. ``main`` ends the process by the same signal (as it would have without us)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def write_output(path: str, write: Callable[[TextIO], object]) -> None:
    """Write the output to ``path`` through ``write(stream)``.

    * A regular file (new, or replaced) is written next to it and renamed into place, so an
      input error half-way through (raised while the events stream) leaves no half file and
      an older good one untouched. A replaced file keeps its mode (and, where we may, owner);
      a new one gets the umask's mode (0666 less the umask), as ``>`` in a shell would; one
      we may not write to is refused. (Other hard links to a replaced file keep the old text.)
    * A symbolic link is followed: its target is written (or created) that way; the link
      stays a link.
    * Anything else that exists (a character or block device such as /dev/null, a FIFO) is
      opened and written as it is: never replaced. Errors there are written up to the point
      of failure, as on stdout. A directory is refused (``Is a directory``).
    * SIGTERM, SIGINT or SIGHUP during the write removes the temp file, then ends the run
      (:class:`Interrupted`); signals the caller ignores (``nohup``) stay ignored.
    """
    try:
        existing: os.stat_result | None = os.stat(path)  # follows symbolic links
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        with open(path, "w", encoding="utf-8") as out:
            write(out)
        return
    target = os.path.realpath(path) if os.path.islink(path) else path
    if existing is not None and not os.access(target, os.W_OK):
        # Renaming over it would work (the directory is writable), but `>` would refuse too.
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    _replace(target, existing, write, shown=path)


def _replace(
    target: str, existing: os.stat_result | None, write: Callable[[TextIO], object], shown: str
) -> None:
    temp: str | None = None

    def remove() -> None:
        nonlocal temp
        name, temp = temp, None
        if name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        remove()
        raise Interrupted(signum)

    previous = _handle_signals(on_signal)
    try:
        # Blocked while the temp file is created and its name recorded: a signal in between
        # would leave a file that nobody knows to remove. Delivered right after.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, CLEANUP_SIGNALS)
        try:
            fd, temp = _create_temp(target, shown)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            if existing is not None:
                _keep_owner_and_mode(fd, existing)
            write(out)
        os.replace(temp, target)
        temp = None
    except BaseException:
        remove()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _create_temp(target: str, shown: str) -> tuple[int, str]:
    directory, name = os.path.split(target)
    for _ in range(100):
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.trace-tmp")
        try:
            # 0o666: the kernel applies the umask, as for any new file.
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), temp
        except FileExistsError:
            continue
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, shown) from None
    raise FileExistsError(f"{shown}: no free temp file name next to it")


def _keep_owner_and_mode(fd: int, existing: os.stat_result) -> None:
    if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
        with contextlib.suppress(PermissionError):  # only root may give a file away
            os.fchown(fd, existing.st_uid, existing.st_gid)
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))  # after chown, which clears set-id bits


def _handle_signals(handler: Callable[[int, FrameType | None], None]) -> dict[int, Any]:
    """Install ``handler`` for the cleanup signals; returns the handlers to put back. Only the
    main thread can; signals set to be ignored (or handled outside Python) are left alone."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for signum in CLEANUP_SIGNALS:
        current = signal.getsignal(signum)
        if current is signal.SIG_IGN or current is None:
            continue
        previous[signum] = current
        signal.signal(signum, handler)
    return previous


def _report_warnings(trace: Trace, stderr: TextIO) -> None:
    warnings = trace.warnings
    total = trace.warning_count
    for warning in warnings[:MAX_WARNINGS]:
        stderr.write(f"warning: {warning}\n")
    if total > MAX_WARNINGS:
        kinds = ", ".join(f"{count:,} {kind}" for kind, count in sorted(trace.diagnostics.kinds.items()))
        stderr.write(f"warning: ... and {total - MAX_WARNINGS:,} more warnings (in all: {kinds})\n")
    if total:
        stderr.write(f"warning: {total:,} problems repaired (--lenient)\n")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv, sys.stdin, sys.stdout, sys.stderr)
    except BrokenPipeError:
        # Python would report the failed flush of stdout at exit; point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
    except Interrupted as exc:
        # The temp file is removed; end the way the signal would have ended us.
        signal.signal(exc.signum, signal.SIG_DFL)
        os.kill(os.getpid(), exc.signum)
        return 128 + exc.signum
