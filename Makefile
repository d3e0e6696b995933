# `make demo` and `make test` each set up .venv on a fresh machine, then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install emulator bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

## The main job: the emulator in-process plus the headline benchmark, printing its table.
demo: $(STAMP)
	$(PY) -m benchmarks --demo

## The whole test suite.
test: $(STAMP)
	$(PY) -m pytest

## Serve the emulator on http://127.0.0.1:8765 with the README's development key (Ctrl-C to stop).
emulator: $(STAMP)
	$(PY) -m emulator --api-key emulator-dev-key

bench-quick: $(STAMP)
	$(PY) -m benchmarks --quick

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
