# SegMate: `make demo` segments the bundled sample CT; `make test` runs every test.
# Both create the Python environment (.venv) first if it is missing or out of date.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.segmate-installed

.PHONY: demo test test-slow setup bench clean

$(STAMP): requirements.txt SegMateCore/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e SegMateCore
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m segmatecore.demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-slow: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m slow

bench: $(STAMP)
	$(VENV)/bin/segmate bench

clean:
	rm -rf demo-output .pytest_cache
