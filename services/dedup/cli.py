"""Command line: `python -m services.dedup scan PATH...`, `watch ROOT...`, `undo LOG`, `chunks PATH...`,
`worker`.

Exit codes (scan, undo, chunks):
  0  the work completed and every path was read (duplicates found or not)
  1  the work completed but some paths could not be read or some actions failed (listed)
  2  bad input (unknown option, bad value, missing root): one line on stderr
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from libs.service.cli import ArgumentParser, UsageError, int_at_least
from services.dedup.files.sizes import parse_size

if TYPE_CHECKING:
    from services.dedup.files.scanner import ScanOptions

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2
# Set by a `scan` that ran to its end: __main__ may then leave without the interpreter's
# teardown (nothing else is running; the report is written and flushed first).
FAST_EXIT = False
# The last scan's result, kept past the command: a one-shot scan then leaves by os._exit
# without freeing its entries and groups one by one (0.085 s of CPU at 200k tiny files, on
# the serial path after the report). One result at most (in-process callers of main()).
LAST_RESULT: object = None


def _workers(text: str) -> int:
    """`auto` or 0 (adaptive, see stages.IO_WORKERS) or a count up to 32: scanner.parse_workers,
    the very rule the service's scan requests follow."""
    from services.dedup.files.scanner import parse_workers

    try:
        return parse_workers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    from services.dedup.files.reader import HASHERS
    from services.dedup.files.scanner import ScanOptions
    from services.dedup.files.sizes import ACTIONS, KEEP_RULE_NAMES

    d = ScanOptions()  # the defaults the service's scan jobs use too

    p = ArgumentParser(prog="python -m services.dedup", description="Find and safely remove duplicate files.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    s = sub.add_parser(
        "scan",
        help="find duplicate files under PATH...",
        description="Find files with identical content: size buckets, head/tail hash, full hash, "
        "byte-by-byte verification. Exit 0: done; 1: done with per-path errors; 2: bad input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("paths", nargs="+", metavar="PATH", help="files or directories to scan")
    s.add_argument("--format", choices=["table", "json", "csv"], default="table", help="output format")
    s.add_argument("-o", "--output", metavar="FILE", help="write the report here instead of stdout")
    s.add_argument(
        "--hash", dest="algorithm", choices=sorted(HASHERS), default=d.algorithm, help="full-content hash"
    )
    s.add_argument(
        "--workers",
        type=_workers,
        default=d.workers,
        help="parallel readers: auto (default: 1 while files are in the page cache, 4 while reads"
        " wait on the disk; warm, without a cache, a forked copy takes part of the groups on a"
        " second core) or a fixed count (never a copy)",
    )
    s.add_argument(
        "--order",
        choices=["path", "inode"],
        default=d.order,
        help="read order: inode (near on-disk order; much faster on a cold cache) or path",
    )
    s.add_argument(
        "--partial-size", type=parse_size, default=d.partial_size, help="bytes hashed at head and tail"
    )
    s.add_argument("-L", "--follow-symlinks", action="store_true", help="follow symlinks (cycle-safe)")
    s.add_argument("-x", "--one-file-system", action="store_true", help="do not cross into other filesystems")
    s.add_argument("--include", action="append", default=[], metavar="GLOB", help="only base names matching")
    s.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip names/paths matching")
    s.add_argument(
        "--min-size",
        type=parse_size,
        default=d.min_size,
        help="smallest file considered (0: empty files too)",
    )
    s.add_argument("--max-size", type=parse_size, default=d.max_size, help="largest file considered")
    s.add_argument("--include-empty", action="store_true", help="report empty files too (= --min-size 0)")
    s.add_argument(
        "--cache", metavar="DIR", default=None, help="hash cache directory (default: ~/.cache/...)"
    )
    s.add_argument("--no-cache", action="store_true", help="do not read or write the hash cache")
    s.add_argument("--reverify", action="store_true", help="byte-verify even members the cache proved before")
    s.add_argument("--progress", action="store_true", default=None, help="force the progress bar on stderr")
    s.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    s.add_argument("--action", choices=sorted(ACTIONS), default=None, help="what to do with each duplicate")
    s.add_argument(
        "--keep", choices=sorted(KEEP_RULE_NAMES), default="oldest", help="which file of a group stays"
    )
    s.add_argument("--apply", action="store_true", help="really act (without it, a dry run is printed)")
    s.add_argument("--dry-run", action="store_true", help="show what the action would do (the default)")
    s.add_argument("--quarantine-dir", metavar="DIR", help="where --action quarantine moves duplicates")
    s.add_argument("--undo-log", metavar="FILE", help="undo log path (default: ./dedup-undo-<time>.jsonl)")

    w = sub.add_parser(
        "watch",
        help="scan PATH... once, then keep the duplicate report up to date from change notifications",
        description="First a full scan, then, after each batch of filesystem changes (inotify), "
        "re-verify only the size buckets that changed and write the report again (same format as "
        "scan). Stops on SIGINT/SIGTERM (exit 0). Exit 2: bad input.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    w.add_argument("paths", nargs="+", metavar="ROOT", help="directories to watch")
    w.add_argument("--format", choices=["table", "json", "csv"], default="json", help="report format")
    w.add_argument(
        "--report", metavar="FILE", help="rewrite the report here (atomically) after each batch, not stdout"
    )
    w.add_argument("--hash", dest="algorithm", choices=sorted(HASHERS), default=d.algorithm, help="hash")
    w.add_argument("--workers", type=_workers, default=d.workers, help="parallel readers (auto or a count)")
    w.add_argument("--order", choices=["path", "inode"], default=d.order, help="read order")
    w.add_argument(
        "--partial-size", type=parse_size, default=d.partial_size, help="bytes hashed at head, tail"
    )
    w.add_argument("-L", "--follow-symlinks", action="store_true", help="follow symlinks inside the roots")
    w.add_argument("-x", "--one-file-system", action="store_true", help="do not cross into other filesystems")
    w.add_argument("--include", action="append", default=[], metavar="GLOB", help="only base names matching")
    w.add_argument("--exclude", action="append", default=[], metavar="GLOB", help="skip names/paths matching")
    w.add_argument("--min-size", type=parse_size, default=d.min_size, help="smallest file considered")
    w.add_argument("--max-size", type=parse_size, default=d.max_size, help="largest file considered")
    w.add_argument("--include-empty", action="store_true", help="report empty files too (= --min-size 0)")
    w.add_argument("--cache", metavar="DIR", default=None, help="hash cache directory (default: ~/.cache)")
    w.add_argument("--no-cache", action="store_true", help="do not read or write the hash cache")
    w.add_argument("--reverify", action="store_true", help="byte-verify even members the cache proved before")
    w.add_argument(
        "--step-ms",
        type=int_at_least(1),
        default=50,
        help="while idle, look for changes this often; also the longest quiet window that ends a batch",
    )
    w.add_argument(
        "--debounce-ms", type=int_at_least(1), default=1600, help="a batch ends after this long at most"
    )
    w.add_argument(
        "--rescan-over",
        type=int_at_least(1),
        default=20000,
        help="a batch of more changes than this (e.g. an inotify overflow) is a full re-scan",
    )

    u = sub.add_parser("undo", help="reverse the actions recorded in an undo log")
    u.add_argument("log", metavar="LOG", help="undo log written by scan --apply")

    c = sub.add_parser("chunks", help="content-defined chunking report: bytes shared by non-identical files")
    c.add_argument("paths", nargs="+", metavar="PATH")
    c.add_argument("--avg", type=parse_size, default=8192, help="average chunk size (power of two)")
    c.add_argument("--min-size", type=parse_size, default=1, help="smallest file considered")
    c.add_argument(
        "--max-bytes", type=parse_size, default=parse_size("512M"), help="stop after reading this much"
    )
    c.add_argument("--format", choices=["table", "json"], default="table")
    c.add_argument("--top", type=int_at_least(1), default=20, help="pairs shown in the table")

    sub.add_parser("worker", help="run the page dedup worker (HTTP API); `worker --help` for its settings")
    return p


class TqdmProgress:
    """One tqdm bar per stage, on stderr."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar = None

    def start(self, stage: str, total: int) -> None:
        from tqdm import tqdm

        self.close()
        self.bar = tqdm(total=total, desc=f"{stage:<6}", unit="file", file=self.stream, leave=False)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _open_output(path: str | None) -> TextIO:
    if path is None:
        sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
        return sys.stdout
    return open(path, "w", encoding="utf-8", errors="surrogateescape", newline="")


def cmd_scan(args: argparse.Namespace) -> int:
    # A scan allocates tens of thousands of small acyclic objects (entries, keys, digests,
    # report dicts) that reference counting frees; the cyclic collector's repeated passes
    # over them find nothing and cost ~10% of a warm re-scan. Off for this command only (the
    # worker's scans keep it on); by the time it is back on, the scan's objects are gone.
    global FAST_EXIT, LAST_RESULT
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        LAST_RESULT = None
        code, LAST_RESULT = _scan_command(args)
        FAST_EXIT = not args.action  # an action's files are its own business: a normal exit
        return code
    finally:
        if was_enabled:
            gc.enable()


def _default_cache_dir() -> str:
    from services.dedup.files.hashcache import default_cache_dir  # sqlite3 only for scans with a cache

    return default_cache_dir()


def _scan_command(args: argparse.Namespace) -> tuple[int, object]:
    """The exit code, and the result (see LAST_RESULT)."""
    from services.dedup.files import report
    from services.dedup.files.scanner import run_scan

    for path in args.paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or directory")
    if args.max_size is not None and args.max_size < args.min_size:
        raise UsageError("--max-size is smaller than --min-size")
    if args.action == "quarantine" and not args.quarantine_dir:
        raise UsageError("--action quarantine needs --quarantine-dir")
    if args.apply and args.dry_run:
        raise UsageError("--apply and --dry-run contradict each other")
    if args.apply and not args.action:
        raise UsageError("--apply needs --action")

    options = _scan_options(args)
    show_progress = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = TqdmProgress(sys.stderr) if show_progress else None
    result = run_scan(args.paths, options, progress=progress)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)

    out = _open_output(args.output)
    try:
        action_failures = 0
        if args.action:
            from services.dedup.files.actions import plan_and_run

            action_failures = plan_and_run(
                result,
                action=args.action,
                keep=args.keep,
                apply=args.apply,
                quarantine_dir=args.quarantine_dir,
                undo_log=args.undo_log,
                out=out if args.format == "table" else sys.stderr,
            )
        if args.format == "json":
            report.write_json(result, out)
        elif args.format == "csv":
            report.write_csv(result, out)
        else:
            report.write_table(result, out)
    finally:
        if out is not sys.stdout:
            out.close()
    return (EXIT_PARTIAL if result.errors or action_failures else EXIT_OK), result


def _scan_options(args: argparse.Namespace) -> ScanOptions:
    """The scan options `scan` and `watch` share, from their common flags (one place)."""
    from services.dedup.files.scanner import ScanOptions

    return ScanOptions(
        algorithm=args.algorithm,
        partial_size=args.partial_size,
        workers=args.workers,
        order=args.order,
        follow_symlinks=args.follow_symlinks,
        one_file_system=args.one_file_system,
        min_size=0 if args.include_empty else args.min_size,
        max_size=args.max_size,
        include=tuple(args.include),
        exclude=tuple(args.exclude),
        cache_dir=None if args.no_cache else (args.cache or _default_cache_dir()),
        reverify=args.reverify,
    )


def cmd_watch(args: argparse.Namespace) -> int:
    import signal
    import threading

    from services.dedup.files.watch import run_watch

    for path in args.paths:
        if not os.path.isdir(path):
            raise UsageError(f"{path}: not a directory")
    if args.max_size is not None and args.max_size < args.min_size:
        raise UsageError("--max-size is smaller than --min-size")
    if args.report is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.report))):
        raise UsageError(f"--report {args.report}: its directory does not exist")
    options = _scan_options(args)
    options.scan_config()  # a bad value is exit 2 before the watcher starts
    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if args.report is None:
        sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    return run_watch(
        args.paths,
        options,
        fmt=args.format,
        report_path=args.report,
        stop=stop,
        step_ms=args.step_ms,
        debounce_ms=args.debounce_ms,
        rescan_over=args.rescan_over,
    )


def cmd_undo(args: argparse.Namespace) -> int:
    from services.dedup.files.actions import undo

    if not os.path.isfile(args.log):
        raise UsageError(f"{args.log}: no such undo log")
    sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    failures = undo(args.log, out=sys.stdout)
    return EXIT_PARTIAL if failures else EXIT_OK


def cmd_chunks(args: argparse.Namespace) -> int:
    from services.dedup.files.chunking import chunk_report, write_chunk_report

    for path in args.paths:
        if not os.path.lexists(path):
            raise UsageError(f"{path}: no such file or directory")
    if args.avg & (args.avg - 1) or args.avg < 256:
        raise UsageError(f"--avg must be a power of two >= 256, got {args.avg}")
    rep = chunk_report(args.paths, avg_size=args.avg, min_file_size=args.min_size, max_bytes=args.max_bytes)
    sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    write_chunk_report(rep, sys.stdout, fmt=args.format, top=args.top)
    return EXIT_PARTIAL if rep.errors else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "worker":
        from services.dedup.worker import main as worker_main

        return worker_main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        handler = {"scan": cmd_scan, "watch": cmd_watch, "undo": cmd_undo, "chunks": cmd_chunks}[args.command]
        return handler(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # ScanConfig and friends validate their own fields
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `scan ... | head`: the reader left, nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
