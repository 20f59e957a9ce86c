# sessionvault: `make demo` and `make test` need only Python 3.11+ (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

.PHONY: demo test down venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

venv: $(BIN)/python

# Start the embedded local stack and record a demo session (prints how to replay it).
demo: $(BIN)/python
	$(PIP) install -q -e '.[local]'
	$(BIN)/sessionvault up --demo

# Everything CI runs: lint, strict types, the tests against real local servers.
# pytest's exit code 5 ("no tests collected") is reported as a failure, never a pass.
test: $(BIN)/python
	$(PIP) install -q -e '.[dev]'
	$(BIN)/ruff check .
	$(BIN)/mypy
	@rc=0; $(BIN)/pytest --durations=25 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

down:
	@if [ -x $(BIN)/sessionvault ]; then $(BIN)/sessionvault down; \
	else echo "no $(BIN); nothing to stop"; fi
