SHELL := /bin/bash
# sessionvault: `./dev demo` and `./dev test` (make demo / make test) need only Python 3.11+ (README.md).
# Every Python package comes from the lock (requirements/*.txt, exported from uv.lock with
# hashes); the Debian packages the tests drive are installed by scripts/system-packages.sh.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
LATEST := .venv-latest
UV_VERSION := 0.13.9
# uv export: hashed requirements for pip, the locked build backend included (--group build).
EXPORT := $(BIN)/uv export --frozen --no-emit-project --no-header --group build

.PHONY: demo test test-latest test-dates check system-packages lock lock-upgrade export-lock down venv console

$(BIN)/python:
	@PYTHON=$(PYTHON) scripts/system-packages.sh venv
	$(PYTHON) -m venv $(VENV)

venv: $(BIN)/python

# Install exactly the locked versions (hash-checked, no resolver), then the project itself
# (editable, with the locked setuptools). The stamp is newer than the lock once it is installed.
$(VENV)/.locked-%: requirements/%.txt pyproject.toml | $(BIN)/python
	$(PIP) install -q --require-hashes --no-deps -r $<
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

system-packages:
	@PYTHON=$(PYTHON) scripts/system-packages.sh test

# Start the embedded local stack and record a demo session (prints how to replay it).
demo: $(VENV)/.locked-local
	$(BIN)/sessionvault up --demo

# Everything CI runs: lint, strict types, the tests against real local servers.
test: system-packages $(VENV)/.locked-dev
	@$(MAKE) --no-print-directory check BIN=$(BIN)
	@$(MAKE) --no-print-directory test-dates BIN=$(BIN)

# The suite (default: the pure tests and the integration tests of date-dependent paths:
# retention and partitions, token expiry; DATES_SUITE=tests for all of it) with the whole process
# tree's wall clock at injected dates (libfaketime): a month's last day, 31 December,
# 29 February, and a daylight-saving change in a local time zone. The monotonic clock stays
# real (timed waits need it); tests/faketime/sitecustomize.py works around libfaketime's EINVAL
# from Python's time.sleep. FAKETIME_DONT_RESET: child processes go on from the parent's time.
# Property tests draw a tenth of their examples here (SVTEST_EXAMPLES_SCALE, tests/examples.py):
# the main run searches at full depth; these runs show that nothing depends on the date.
DATES ?= 2026-02-28T23:30:00@UTC 2026-12-31T23:59:30@UTC 2028-02-29T12:00:00@UTC \
	2027-03-28T03:30:00@Europe/Berlin
DATES_SUITE ?= tests/unit tests/integration/test_retention.py tests/integration/test_api_authz.py
test-dates:
	@lib=$$(ls /usr/lib/*/faketime/libfaketime.so.1 | head -1); \
	for spec in $(DATES); do when=$${spec%@*}; tz=$${spec#*@}; \
		echo "test-dates: $(DATES_SUITE) at $$when ($$tz)"; \
		LD_PRELOAD=$$lib FAKETIME="@$${when/T/ }" FAKETIME_DONT_FAKE_MONOTONIC=1 \
		FAKETIME_DONT_RESET=1 TZ=$$tz PYTHONPATH=$(CURDIR)/tests/faketime \
		SVTEST_EXAMPLES_SCALE=$${SVTEST_EXAMPLES_SCALE:-0.1} \
			$(BIN)/pytest -q -rfE -p no:cacheprovider $(DATES_SUITE) \
			| grep -E '^(FAILED|ERROR) |^=* ?[0-9]+ (passed|failed)|^[0-9]+ (passed|failed)'; \
		[ $${PIPESTATUS[0]} -eq 0 ] || exit 1; \
	done

# The same suite against the newest versions pyproject.toml allows (not the lock), in a venv
# of its own: drift in a dependency shows here before a lock upgrade lets it in.
test-latest: system-packages
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(LATEST)/bin/python -m pip install -q --disable-pip-version-check --upgrade \
		--upgrade-strategy eager -e '.[dev]' setuptools wheel
	@$(LATEST)/bin/python scripts/lock_drift.py requirements/dev.txt
	@$(MAKE) --no-print-directory check BIN=$(LATEST)/bin

# ruff, mypy --strict, pytest with the tools of $(BIN). pytest's exit code 5 ("no tests
# collected") is reported as a failure, never a pass.
check:
	$(BIN)/ruff check .
	MYPY_CACHE_DIR=$(dir $(BIN)).mypy_cache $(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	@rc=0; $(BIN)/pytest --durations=25 || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# Re-lock after editing dependencies in pyproject.toml (keeps current pins where they still
# fit); lock-upgrade moves every pin to the newest allowed version.
lock: | $(BIN)/python
	$(PIP) install -q uv==$(UV_VERSION)
	$(BIN)/uv lock --python 3.11
	@$(MAKE) --no-print-directory export-lock

lock-upgrade: | $(BIN)/python
	$(PIP) install -q uv==$(UV_VERSION)
	$(BIN)/uv lock --python 3.11 --upgrade
	@$(MAKE) --no-print-directory export-lock

export-lock:
	$(EXPORT) --extra dev -o requirements/dev.txt >/dev/null
	$(EXPORT) --extra local -o requirements/local.txt >/dev/null
	$(EXPORT) -o requirements/runtime.txt >/dev/null

# Rebuild the web console's bundle from api/console/frontend with the pinned npm packages (needs
# Node.js and npm; running the console does not: the bundle ships in the package) and record
# what it was built from (api/console/assets/BUILD, checked by tests/unit/test_console_build.py).
console: | $(BIN)/python
	cd api/console/frontend && npm ci --no-audit --no-fund && npm run build
	$(BIN)/python -m api.console.build_info --write

down:
	@if [ -x $(BIN)/sessionvault ]; then $(BIN)/sessionvault down; \
	else echo "no $(BIN); nothing to stop"; fi
