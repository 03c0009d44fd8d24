"""Command line: ``python -m libs.trace report|convert FILE ...``.

Exit status: 0 on success, 2 on bad input or usage (one line on stderr, never a traceback),
1 on an unexpected internal error. Warnings of --lenient go to stderr, one per line (capped).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import TextIO

from libs.service.cli import ArgumentParser, UsageError
from libs.trace.calltree import CallTree
from libs.trace.detect import FORMATS
from libs.trace.errors import TraceError
from libs.trace.events import UNITS_TO_MICROSECONDS
from libs.trace.pipeline import Trace, read_trace
from libs.trace.writers import chrome, collapsed, speedscope, svg, table

OUTPUTS = ("table", "chrome", "collapsed", "speedscope", "svg")
MAX_WARNINGS = 20
PROGRESS_EVERY = 1_000_000


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


def _progress(lines: Iterable[str], stream: TextIO) -> Iterator[str]:
    """Count lines on a terminal's stderr, so long inputs show they are moving."""
    count = 0
    for count, line in enumerate(lines, 1):
        if count % PROGRESS_EVERY == 0:
            stream.write(f"\rread {count:,} lines")
            stream.flush()
        yield line
    if count >= PROGRESS_EVERY:
        stream.write(f"\rread {count:,} lines\n")


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
        with open(args.input, encoding="utf-8") if args.input != "-" else _stdin(stdin) as lines:
            lines_iter: Iterable[str] = _progress(lines, stderr) if stderr.isatty() else lines
            trace = read_trace(
                lines_iter,
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
                _write_file(trace, args, args.output)
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


def _write_file(trace: Trace, args: argparse.Namespace, path: str) -> None:
    """Write next to ``path`` and rename into place: an input error half-way through (raised
    while the events stream) must not leave half a file or clobber an older good one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".trace-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            _write(trace, args, out)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


class _stdin:
    """A context manager that hands out stdin and leaves it open."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __enter__(self) -> TextIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        return None


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
