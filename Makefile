# The two commands: `make run` and `make test`. Both create .venv with Python 3.11+ first.
# `make run` needs nothing else: a SQLite file (insider.db), the in-process cache and the
# built-in simulated provider are the defaults. Override with INSIDER_* variables or .env.
VENV ?= .venv
BIN := $(VENV)/bin
# Two steps: what the service needs (make run), then the test tools (make test, make lint).
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# The first Python 3.11 or newer on the PATH; `make run PYTHON=/path/to/python3.12` to choose.
PYTHON ?= $(shell for p in python3 python3.13 python3.12 python3.11 python; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& echo $$p && break; done)

.PHONY: run test lint install clean

$(STAMP): setup.cfg pyproject.toml
	@test -n "$(PYTHON)" || { echo "insider needs Python 3.11 or newer on the PATH (or make ... PYTHON=/path/to/python3.11)" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit("insider needs Python 3.11 or newer, $(PYTHON) is %d.%d" % sys.version_info[:2]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV) || { echo "could not create $(VENV): on Debian or Ubuntu, install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

run: $(STAMP)
	$(BIN)/python -m insider

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
