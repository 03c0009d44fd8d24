"""Failure-injection drills: Chaos Toolkit experiments against the running stack (issue 11).

One experiment per drill (`<name>.json`), the project's probes and actions as small functions
(probes.py, actions.py) that reach the stack only through its public HTTP APIs and the process
table, a runner that gives each a PASS/FAIL verdict with evidence (runner.py), and the CLI
behind `make drill NAME=x` and `make drills` (__main__.py). docs/drills.md explains each drill.
"""
