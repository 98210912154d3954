# dicetalk: every command of the README goes through this file.
# `make setup` builds .venv once; later targets reuse it and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Where `make demo` writes (raw synthetic set, store, runs, results).
DEMO ?= demo

# Data preparation: RAW= raw folder, STORE= training store; sharded with SHARD=i NUM_SHARDS=N.
RAW        ?=
STORE      ?=
PREP_ARGS  ?=
SHARD      ?= 0
NUM_SHARDS ?= 1

.PHONY: help setup test demo clean-demo prep-mead prep-hdtf prep-index

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
	$(PY) -c "from dicetalk.audio import make_tiny_whisper; make_tiny_whisper('$(DEMO)/whisper-tiny-random')"
	$(PY) -m data_prep mead --raw $(DEMO)/raw/mead --out $(DEMO)/store --landmarks sidecar \
	    --whisper $(DEMO)/whisper-tiny-random --size 64 --workers 2
	$(PY) -m data_prep hdtf --raw $(DEMO)/raw/hdtf --out $(DEMO)/store --landmarks sidecar \
	    --whisper $(DEMO)/whisper-tiny-random --size 64 --workers 2
	$(PY) -m data_prep index $(DEMO)/store

prep-mead: $(STAMP)
	@test -n "$(RAW)" -a -n "$(STORE)" || { echo "usage: make prep-mead RAW=/data/MEAD STORE=/data/store"; exit 2; }
	$(PY) -m data_prep mead --raw $(RAW) --out $(STORE) --shard $(SHARD) --num-shards $(NUM_SHARDS) $(PREP_ARGS)
	@if [ "$(NUM_SHARDS)" = "1" ]; then $(PY) -m data_prep index $(STORE); fi

prep-hdtf: $(STAMP)
	@test -n "$(RAW)" -a -n "$(STORE)" || { echo "usage: make prep-hdtf RAW=/data/HDTF STORE=/data/store"; exit 2; }
	$(PY) -m data_prep hdtf --raw $(RAW) --out $(STORE) --shard $(SHARD) --num-shards $(NUM_SHARDS) $(PREP_ARGS)
	@if [ "$(NUM_SHARDS)" = "1" ]; then $(PY) -m data_prep index $(STORE); fi

prep-index: $(STAMP)
	@test -n "$(STORE)" || { echo "usage: make prep-index STORE=/data/store"; exit 2; }
	$(PY) -m data_prep index $(STORE)

clean-demo:
	rm -rf $(DEMO)
