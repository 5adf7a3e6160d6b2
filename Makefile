# Developer and CI entry points; `make help` lists them. Works on a fresh clone
# with python3 and npm on PATH: targets create .venv and node_modules as needed.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Stamps: re-install only when the files that describe the install change.
VENV_STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
BUILD := build
BUF_DEPS := $(BUILD)/buf-deps
BUF := node_modules/.bin/buf

.PHONY: help venv node_modules protos protos-check buf-deps run test lint bench demo fmt clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: $(VENV_STAMP) ## create .venv and install the project with its dev tools

$(VENV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

node_modules: $(NODE_STAMP) ## install buf from package-lock.json

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

protos: $(VENV_STAMP) ## regenerate gen/ from protos/
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python scripts/gen_protos.py

protos-check: protos ## fail when the committed gen/ differs from what protos/ generate
	git diff --exit-code --stat -- gen/ || { echo "gen/ is stale: run 'make protos' and commit" >&2; exit 1; }
	untracked="$$(git ls-files --others --exclude-standard -- gen/)"; \
	if [ -n "$$untracked" ]; then echo "untracked generated files (commit them):" >&2; echo "$$untracked" >&2; exit 1; fi

# buf sees google/api, google/rpc and google/type from the googleapis-common-protos
# wheel through symlinks under build/ (see buf.yaml), so no copies are committed.
buf-deps: $(VENV_STAMP)
	root="$$($(BIN)/python -c 'import google.api, pathlib; print(pathlib.Path(google.api.__path__[0]).parent.parent)')"; \
	mkdir -p $(BUF_DEPS)/google; \
	for d in api rpc type; do ln -sfn "$$root/google/$$d" $(BUF_DEPS)/google/$$d; done

run: $(VENV_STAMP) ## run nats-server and all services locally (Ctrl-C stops them)
	$(BIN)/kasvu run

# One pytest worker per core of a CI machine: most tests keep one core busy and wait on the other
# (servers, fsync), so two workers halve the run. Each worker has its own servers and temp dirs;
# --dist loadscope keeps a module's tests, and the suite a module shares, on one worker.
TEST_WORKERS ?= 2

test: $(VENV_STAMP) ## run the tests (TEST_WORKERS=0 for one process)
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadscope

lint: $(VENV_STAMP) $(NODE_STAMP) buf-deps ## ruff, mypy, import contracts, buf lint, generated code up to date
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BUF) lint
	$(MAKE) --no-print-directory protos-check

bench: $(VENV_STAMP) ## run the benchmarks
	$(BIN)/python -m bench

demo: $(VENV_STAMP) ## walk through the suite (needs `make run` in another terminal)
	$(BIN)/kasvu demo

fmt: $(VENV_STAMP) $(NODE_STAMP) ## format Python and protos in place
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BUF) format -w protos

clean: ## remove caches and build output (keeps .venv, node_modules and .kasvu data)
	rm -rf $(BUILD) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
	find . -path ./$(VENV) -prune -o -path ./node_modules -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf
