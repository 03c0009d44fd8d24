"""Load experiments: a load swept over a running stack, a prediction, a measurement, a report.

    make experiment NAME=inference-capacity      # one (make experiment: the list)
    make experiments                             # all of them, then a summary table

Each experiment module has NAME, TITLE, QUESTION, NEEDS (the stack services it talks to) and
`run(ctx) -> Report`. See runner.py for the command line and docs/experiments.md for results.
"""
