# One command installs and runs the demo, one installs and runs the tests.
# TORCH selects the PyTorch build: the default resolves to a local CPU wheel here; pass your own
# (e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128") or VENV to reuse an environment.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.relaxedortho-installed
OUT    ?= demo-out
JOBS   ?= 2

.PHONY: install demo test test-fast docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,docs,bench]"
	touch $(STAMP)

demo: install
	$(BIN)/relaxedortho demo --out $(OUT)

test: install
	$(BIN)/python -m pytest -n $(JOBS) -q

test-fast: install
	$(BIN)/python -m pytest -n $(JOBS) -q -m "not slow"

docs: install
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

bench: install
	$(BIN)/python benchmarks/bench_maps.py

clean:
	rm -rf $(VENV) docs/_build docs/jupyter_execute .pytest_cache .hypothesis
