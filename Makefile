# dicetalk: every command of the README goes through this file.
# `make setup` builds .venv once; later targets reuse it and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Where `make demo` writes (raw synthetic set, store, runs, results).
DEMO ?= demo

.PHONY: help setup test demo clean-demo

help:
	@echo "make setup | test | demo   (see README.md)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m data_prep.synthetic --out $(DEMO)/raw

clean-demo:
	rm -rf $(DEMO)
