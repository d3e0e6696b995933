# `make demo` and `make test` each set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install chromium emulator bench-quick clean

# uv installs the same packages as pip, in parallel: 25 s against 75 s on the 2-core machine with
# empty caches (benchmarks/README.md). --compile-bytecode as pip does: without the .pyc files, and
# with PYTHONDONTWRITEBYTECODE set (as on these machines), every process (each test process,
# worker, Ray actor) compiles qiskit again at import, which made the suite 50% slower.
# pip stays the fallback where uv cannot be had. The venv is made without pip (ensurepip alone
# takes 6-7 s here) and uv is fetched by the interpreter's own pip into .venv/uv-tool; where that
# pip is missing or refuses (PEP 668), the fallback adds pip to the venv and installs with it.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv --without-pip $(VENV)
	( $(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target $(VENV)/uv-tool uv && \
	  $(VENV)/uv-tool/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e ".[test,bench]" ) || \
	( echo "uv failed: installing with pip" && $(PY) -m ensurepip --default-pip >/dev/null && \
	  $(PY) -m pip install --quiet -e ".[test,bench]" )
	touch $(STAMP)

install: $(STAMP)

## The main job: the emulator in its own process plus the headline benchmark, printing its table.
demo: $(STAMP)
	$(PY) -m benchmarks --demo

## The whole test suite (the dashboard's tests drive Debian's headless Chromium), two test
## processes, a module per process at a time (module-scoped emulators stay whole); the tests on
## Ray go first, as one unit, to one process: one Ray cluster (tests/conftest.py).
test: $(STAMP) chromium
	$(PY) -m pytest -n 2 --dist loadfile

## The unit layer only (no emulator or Ray cluster started, nothing slow): the edit-test loop,
## well under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not e2e and not slow and not ray" -q

## Style and types: ruff (lint and format) and mypy --strict over the packages and the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check aioruntime emulator benchmarks tests examples
	$(VENV)/bin/ruff format --check aioruntime emulator benchmarks tests examples
	$(VENV)/bin/mypy aioruntime emulator benchmarks tests

## Debian's chromium for the browser tests: installed when missing and running as root (as CI
## does); otherwise those tests skip, saying why. Playwright's own browser download is not used.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the browser tests"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: /usr/bin/chromium is missing (apt-get install -y chromium as root); the browser tests will skip"; \
	  fi; \
	fi

## Serve the emulator on http://127.0.0.1:8765 with the README's development key (Ctrl-C to stop).
emulator: $(STAMP)
	$(PY) -m emulator --api-key emulator-dev-key

bench-quick: $(STAMP)
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
