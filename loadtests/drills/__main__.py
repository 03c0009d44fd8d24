"""`make drill NAME=x` / `make drills`: failure-injection drills against the running stack.

    python -m loadtests.drills                     list the drills
    python -m loadtests.drills NAME [NAME ...]     run these, print PASS/FAIL and the evidence
    python -m loadtests.drills --all               run every drill, print one table
    --port-offset N                                the stack runs with `deploy.launch --port-offset N`
    --var-dir DIR                                  ... and `--var-dir DIR` (the disk-full drill mounts there)
    --out DIR                                      evidence goes to DIR/<name>/ (default reports/drills)
    --set KEY=VALUE                                a setting of the drill's configuration, e.g.
                                                   `frozen-service --set frozen_service=dedup`

Exit 0 when every drill run passed (SKIP counts as not passed: exit 1), 2 on bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

from libs.service.cli import EXIT_USAGE, ArgumentParser, UsageError
from loadtests.drills import runner, stack


def _settings(pairs: list[str], names: list[str]) -> dict[str, str]:
    """--set KEY=VALUE pairs; KEY must be a setting one of the named drills declares."""
    declared = {key for name in names for key in runner.load(name).get("configuration", {})}
    settings: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            raise UsageError(f"--set: expected KEY=VALUE, got {pair!r}")
        if key not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise UsageError(f"--set: {key!r} is not a setting of these drills (settings: {known})")
        if key.endswith("_service"):
            try:
                stack.port(value)
            except ValueError:
                raise UsageError(f"--set: {key}={value!r}: no such service with a published port") from None
        settings[key] = value
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m loadtests.drills", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="drills to run (default: list them)")
    parser.add_argument("--all", action="store_true", help="run every drill")
    parser.add_argument("--port-offset", type=int, default=0, help="the stack's --port-offset")
    parser.add_argument("--var-dir", type=Path, default=None, help="the stack's --var-dir (default var/)")
    parser.add_argument("--out", type=Path, default=runner.REPORTS, help="evidence folder")
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting the drill's configuration declares (e.g. frozen_service=dedup)",
    )
    try:
        args = parser.parse_args(argv)
        names = runner.available() if args.all else args.names
        unknown = [n for n in names if n not in runner.available()]
        if unknown:
            raise UsageError(f"unknown drill {unknown[0]!r}; drills: {', '.join(runner.available())}")
        settings = _settings(args.settings, names)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not names:
        for name in runner.available():
            experiment = runner.load(name)
            print(f"{name:<26} {experiment['title']}")
        print("\nrun one: make drill NAME=<drill>   all: make drills")
        return 0
    configuration = {
        "port_offset": args.port_offset,
        "var_dir": str(args.var_dir) if args.var_dir else None,
        **settings,
    }
    outcomes = []
    for name in names:
        print(f"drill {name} ...", flush=True)
        outcome = runner.run(name, configuration, args.out)
        outcomes.append(outcome)
        print(f"  {outcome.verdict}  {outcome.title}  ({outcome.duration_s:g} s)")
        for line in outcome.evidence:
            print(f"    - {line}")
        print(f"    figures: {outcome.key_text()}")
        print(f"    evidence: {args.out / name}/report.md", flush=True)
    if len(outcomes) > 1:
        print()
        print(runner.table(outcomes))
        (args.out).mkdir(parents=True, exist_ok=True)
        (args.out / "summary.md").write_text(runner.table(outcomes) + "\n")
    return 0 if all(o.verdict == "PASS" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
