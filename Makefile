# Two entry points do all the set-up on a fresh machine (Python 3.11 + pip):
#   make run   - compute the default value functions into ./store (if missing) and serve them
#   make test  - run the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test compute serve bench clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/reach run

compute: $(STAMP)
	$(VENV)/bin/reach compute grids/quadrotor.toml
	$(VENV)/bin/reach compute grids/air_taxi.toml

serve: $(STAMP)
	$(VENV)/bin/reach serve

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

bench: $(STAMP)
	$(PY) benchmarks/solver.py
	$(PY) benchmarks/client.py
	$(PY) benchmarks/service.py
	$(PY) benchmarks/scenarios.py

clean:
	rm -rf $(VENV) store
