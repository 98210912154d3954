# dicetalk: every command of the README goes through this file.
# `make setup` builds .venv once; later targets reuse it and reinstall only when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

# Where `make demo` writes (raw synthetic set, store, runs, results). Fixed: configs/tiny/*.yaml read demo/.
DEMO := demo

# Data preparation: RAW= raw folder, STORE= training store; sharded with SHARD=i NUM_SHARDS=N.
RAW        ?=
STORE      ?=
PREP_ARGS  ?=
SHARD      ?= 0
NUM_SHARDS ?= 1

# Training / evaluation: CONFIG= picks the YAML; SLURM=1 submits with sbatch instead (NODES, GPUS, ...;
# DRY_RUN=1 prints the job script). ARGS= adds `dicetalk fit` / `dicetalk eval` flags.
ARGS ?=

.PHONY: help setup test demo clean-demo prep-mead prep-hdtf prep-index train-embedder train-talker \
        export-priors eval

help:
	@echo "make setup | test | demo | prep-mead | prep-hdtf | prep-index | train-embedder | export-priors |"
	@echo "     train-talker | eval      (see README.md)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m data_prep.synthetic --out $(DEMO)/raw --mead-identities 12
	$(PY) -c "from dicetalk.audio import make_tiny_whisper; make_tiny_whisper('$(DEMO)/whisper-tiny-random')"
	$(PY) -m data_prep mead --raw $(DEMO)/raw/mead --out $(DEMO)/store --landmarks sidecar \
	    --whisper $(DEMO)/whisper-tiny-random --size 64 --workers 2
	$(PY) -m data_prep hdtf --raw $(DEMO)/raw/hdtf --out $(DEMO)/store --landmarks sidecar \
	    --whisper $(DEMO)/whisper-tiny-random --size 64 --workers 2
	$(PY) -m data_prep index $(DEMO)/store
	$(PY) -m dicetalk.cli fit --config configs/tiny/embedder.yaml --ckpt_path auto
	$(PY) -m dicetalk.cli validate --config configs/tiny/embedder.yaml \
	    --ckpt_path $(DEMO)/embedder/checkpoints/last.ckpt
	$(PY) -m dicetalk.priors export --ckpt $(DEMO)/embedder/checkpoints/last.ckpt --store $(DEMO)/store \
	    --out $(DEMO)/priors
	$(PY) -m dicetalk.cli fit --config configs/tiny/talker.yaml --ckpt_path auto
	$(PY) -m dicetalk.cli eval --config configs/tiny/eval.yaml

prep-mead: $(STAMP)
	@test -n "$(RAW)" -a -n "$(STORE)" || { echo "usage: make prep-mead RAW=/data/MEAD STORE=/data/store"; exit 2; }
ifdef SLURM
	$(PY) -m dicetalk.slurm prep --dataset mead --raw $(RAW) --store $(STORE) --shards $(NUM_SHARDS) -- $(PREP_ARGS)
else
	$(PY) -m data_prep mead --raw $(RAW) --out $(STORE) --shard $(SHARD) --num-shards $(NUM_SHARDS) $(PREP_ARGS)
	@if [ "$(NUM_SHARDS)" = "1" ]; then $(PY) -m data_prep index $(STORE); fi
endif

prep-hdtf: $(STAMP)
	@test -n "$(RAW)" -a -n "$(STORE)" || { echo "usage: make prep-hdtf RAW=/data/HDTF STORE=/data/store"; exit 2; }
ifdef SLURM
	$(PY) -m dicetalk.slurm prep --dataset hdtf --raw $(RAW) --store $(STORE) --shards $(NUM_SHARDS) -- $(PREP_ARGS)
else
	$(PY) -m data_prep hdtf --raw $(RAW) --out $(STORE) --shard $(SHARD) --num-shards $(NUM_SHARDS) $(PREP_ARGS)
	@if [ "$(NUM_SHARDS)" = "1" ]; then $(PY) -m data_prep index $(STORE); fi
endif

prep-index: $(STAMP)
	@test -n "$(STORE)" || { echo "usage: make prep-index STORE=/data/store"; exit 2; }
	$(PY) -m data_prep index $(STORE)

clean-demo:
	rm -rf $(DEMO)

train-embedder: CONFIG ?= configs/embedder.yaml
train-embedder: $(STAMP)
ifdef SLURM
	$(PY) -m dicetalk.slurm embedder --config $(CONFIG) -- $(ARGS)
else
	$(PY) -m dicetalk.cli fit --config $(CONFIG) --ckpt_path auto $(ARGS)
endif

# Per-emotion mean priors (released .npy format + one safetensors) from a trained embedder.
export-priors: EMBEDDER ?= outputs/embedder/checkpoints/last.ckpt
export-priors: $(STAMP)
	@test -n "$(STORE)" || { echo "usage: make export-priors STORE=/data/store [EMBEDDER=...ckpt] [PRIORS=dir]"; exit 2; }
	$(PY) -m dicetalk.priors export --ckpt $(EMBEDDER) --store $(STORE) --out $(or $(PRIORS),outputs/priors)

train-talker: CONFIG ?= configs/talker.yaml
train-talker: $(STAMP)
ifdef SLURM
	$(PY) -m dicetalk.slurm talker --config $(CONFIG) -- $(ARGS)
else
	$(PY) -m dicetalk.cli fit --config $(CONFIG) --ckpt_path auto $(ARGS)
endif

eval: CONFIG ?= configs/eval.yaml
eval: $(STAMP)
ifdef SLURM
	$(PY) -m dicetalk.slurm eval --config $(CONFIG) -- $(ARGS)
else
	$(PY) -m dicetalk.cli eval --config $(CONFIG) $(ARGS)
endif
