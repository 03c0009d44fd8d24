"""`python -m loadtests.experiments NAME | --all | --list`: run experiments against the running stack.

    --smoke            seconds-long runs with small loads (what `make test` runs): the reports and
                       the cross-checks are real, the curves are too short to mean much
    --port-offset N    the stack was started with `python -m deploy.launch --port-offset N`
    --url svc=URL      an explicit address for one service (repeatable)
    --out DIR          reports go to DIR/<name>/ (default reports/experiments/)

Exit status: 0 when every report was written and every client/server cross-check held, 1 when
an experiment failed or a cross-check did not hold, 2 on bad usage (one line on stderr).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from deploy.topology import ROOT
from libs.service.cli import EXIT_USAGE, ArgumentParser, UsageError
from loadtests.experiments.report import Report
from loadtests.experiments.target import StackDown, Target

MODULES = [
    "inference_capacity",
    "utilisation",
    "batching",
    "fairness",
    "embeddings_delay",
    "crawler_hosts",
    "dedup_consumers",
]


@dataclass
class Context:
    target: Target
    out: Path
    smoke: bool
    seed: int = 1
    prometheus: str | None = None


def experiments() -> dict[str, ModuleType]:
    out = {}
    for name in MODULES:
        try:
            module = importlib.import_module(f"loadtests.experiments.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"loadtests.experiments.{name}":
                continue  # not written yet
            raise
        out[module.NAME] = module
    return out


def parse_args(argv: list[str] | None) -> Namespace:
    known = experiments()
    parser = ArgumentParser(prog="python -m loadtests.experiments", description=__doc__.split("\n")[0])
    parser.add_argument("name", nargs="?", help=f"one of: {', '.join(known)}")
    parser.add_argument("--all", action="store_true", help="run every experiment")
    parser.add_argument("--list", action="store_true", help="list the experiments")
    parser.add_argument("--smoke", action="store_true", help="seconds-long runs, small loads")
    parser.add_argument("--port-offset", type=int, default=0, help="as given to deploy.launch")
    parser.add_argument("--url", action="append", default=[], help="service=URL (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "experiments")
    parser.add_argument("--seed", type=int, default=1, help="seed of the arrival schedules")
    parser.add_argument("--skip", default="", help="comma-separated experiments to leave out of --all")
    args = parser.parse_args(argv)
    if args.list or not (args.name or args.all):
        return args
    if args.name and args.name not in known:
        raise UsageError(f"NAME: expected one of {', '.join(known)}, got {args.name!r}")
    urls = {}
    for spec in args.url:
        service, sep, url = spec.partition("=")
        if not sep or not url.startswith(("http://", "https://", "redis://")):
            raise UsageError(f"--url: expected service=http://host:port, got {spec!r}")
        urls[service] = url
    args.urls = urls
    return args


def run_one(module: ModuleType, ctx: Context) -> Report:
    started = time.time()
    print(f"== {module.NAME}: {module.QUESTION}", flush=True)
    ctx.target.require(*module.NEEDS)
    report = module.run(ctx)
    report.meta["duration_s"] = round(time.time() - started, 1)
    report.meta["smoke"] = ctx.smoke
    report.write(ctx.out)
    for check in report.checks:
        print(f"   {check.line()}", flush=True)
    print(f"   -> {report.verdict}: {report.answer}", flush=True)
    print(f"   report: {ctx.out}/report.md", flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    known = experiments()
    if args.list or not (args.name or args.all):
        for name, module in known.items():
            print(f"{name:22} {module.QUESTION}")
        return 0
    skip = {s for s in args.skip.split(",") if s}
    names = [n for n in known if n not in skip] if args.all else [args.name]
    target = Target(args.port_offset, args.urls)
    summary: list[tuple[str, str, str, str]] = []
    failed = False
    for name in names:
        module = known[name]
        ctx = Context(target, args.out / name, args.smoke, args.seed, _prometheus(target))
        try:
            report = run_one(module, ctx)
        except StackDown as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            summary.append((name, "not run", "-", str(exc)[:80]))
            failed = True
            continue
        except Exception:  # one broken experiment must not hide the others' results
            traceback.print_exc()
            summary.append((name, "crashed", "-", "see the traceback above"))
            failed = True
            continue
        held = f"{sum(c.ok for c in report.checks)}/{len(report.checks)}"
        summary.append((name, report.verdict, held, report.answer.split(". ")[0][:90]))
        failed |= not report.checks_hold
    if len(names) > 1 or args.all:
        _print_summary(summary)
        _write_index(args.out, summary)
    return 1 if failed else 0


def _prometheus(target: Target) -> str | None:
    try:
        return target.url("prometheus")
    except ValueError:
        return None


def _print_summary(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("experiment", "verdict", "checks", "answer")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    print()
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=False)) + "  " + row[3])


def _write_index(out: Path, rows: list[tuple[str, str, str, str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Experiments: summary",
        "",
        "| experiment | verdict | client/server checks | answer |",
        "|---|---|---|---|",
    ]
    lines += [f"| [{n}]({n}/report.md) | {v} | {c} | {a} |" for n, v, c, a in rows]
    (out / "README.md").write_text("\n".join(lines) + "\n")
