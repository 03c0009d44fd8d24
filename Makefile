# Proving Ground: `make setup && make run`, and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pass extra pytest arguments with `make test ARGS="-k lru"`.
ARGS ?=

.PHONY: setup run test lint format bench clean help loadtest bench-docs experiment experiments drill drills

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python  ## venv with the project (editable, all extras, dev tools) + Debian binaries
	# torch is pinned in the inference extra; installing everything in one resolve keeps it at the CPU wheel.
	$(BIN)/pip install -q -e '.[all]'
	bash scripts/install-system-deps.sh

# `make run` starts redis-server too when it is installed (`make setup` installs it), as compose
# always does; `make run REDIS=` runs without it. `make run DIRECT=1` skips the fault proxy (every
# hop direct); `make run WORKERS=3` runs the crawler as a control API and 3 workers on Redis.
REDIS ?= $(if $(shell command -v redis-server 2>/dev/null),1,)
run: $(BIN)/python  ## start the whole stack as local processes, supervised (Ctrl-C stops it)
	$(BIN)/python -m deploy.launch $(if $(REDIS),--redis,) $(if $(WORKERS),--workers $(WORKERS),) $(if $(DIRECT),--direct,)

test: $(BIN)/python  ## the whole test suite
	$(BIN)/python -m pytest $(ARGS)

lint:  ## ruff, the import contracts of ARCHITECTURE.md (import-linter), mypy, vulture
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/vulture

format:
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench:  ## every benchmark (writes reports under reports/)
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache reports

# `make loadtest SERVICE=inference USERS=20 DURATION=60s` against the stack `make run` started.
SERVICE ?= inference
USERS ?= 10
DURATION ?= 30s
loadtest:  ## locust, headless and bounded, against the local stack (reports/loadtest/)
	$(BIN)/python -m loadtests.run --service $(SERVICE) --users $(USERS) --duration $(DURATION)

# `make experiment NAME=inference-capacity` / `make experiments` against the stack `make run` started.
NAME ?=
EXPERIMENT_ARGS ?=
experiment:  ## one load experiment (NAME=..., list: make experiment) -> reports/experiments/NAME/
	$(BIN)/python -m loadtests.experiments $(if $(NAME),$(NAME),--list) $(EXPERIMENT_ARGS)

experiments:  ## every load experiment, then a summary table (reports/experiments/)
	$(BIN)/python -m loadtests.experiments --all $(EXPERIMENT_ARGS)

bench-docs:  ## assemble docs/benchmarks.md from docs/bench/*.md
	{ cat docs/bench/_header.md; for f in docs/bench/[!_]*.md; do echo; cat "$$f"; done; } > docs/benchmarks.md

# `make drill NAME=inference-overload` against the stack `make run` started (`make drill` lists them);
# `make drills` runs every drill and prints one table. Evidence under reports/drills/<name>/.
NAME ?=
DRILL_ARGS ?=
drill:  ## one failure-injection drill (loadtests/drills/): PASS/FAIL with its evidence
	$(BIN)/python -m loadtests.drills $(NAME) $(DRILL_ARGS)

drills:  ## every drill against the running stack, one table (reports/drills/)
	$(BIN)/python -m loadtests.drills --all $(DRILL_ARGS)
