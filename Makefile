# make demo | make test | make test-ext   (each creates .venv on first use)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
EXT_STAMP := $(VENV)/.installed-ext
# test processes (pytest-xdist); a test file stays on one worker: its module fixtures are built once
TEST_WORKERS ?= 2

.PHONY: demo test test-ext install clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -e '.[test]'
	touch $@

# torch-scatter / torch-sparse ship as source only: build against the installed torch.
$(EXT_STAMP): $(TEST_STAMP)
	$(PIP) install -q --no-build-isolation torch-scatter torch-sparse
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m lightning_tru.demo

test: $(TEST_STAMP)
	$(PY) -m pytest -q -m "not ext" -n $(TEST_WORKERS) --dist loadfile

test-ext: $(EXT_STAMP)
	$(PY) -m pytest -q -m ext

clean:
	rm -rf $(VENV) runs
