# SegMate: `make demo` segments the bundled sample CT; `make test` runs every test.
# `make demo` installs only what SegMate needs at run time (requirements.txt); `make test`,
# `make test-slow` and `make bench` add what tests, benchmarks and training need (requirements-dev.txt).
# Each creates the Python environment (.venv) first if it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP     := $(VENV)/.segmate-installed
DEV_STAMP := $(VENV)/.segmate-dev-installed

.PHONY: demo test test-slow setup setup-dev bench clean

$(STAMP): requirements.txt SegMateCore/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e SegMateCore
	touch $(STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

demo: $(STAMP)
	$(PY) -m segmatecore.cli.demo

test: $(DEV_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(DEV_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

bench: $(DEV_STAMP)
	$(VENV)/bin/segmate bench

clean:
	rm -rf demo-output .pytest_cache
