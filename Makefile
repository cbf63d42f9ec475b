# Entry points: `make test`, `make demo`, `make bench`. Everything installs into .venv.
# GPU users: create .venv and install a CUDA torch into it first (README, "Installing on a GPU machine");
# the install step below keeps whatever torch .venv already has.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU_VERSION ?= 2.13.0
STAMP := $(VENV)/.deps-installed
PYTEST_ARGS ?=

.PHONY: install test demo bench bench-optim bench-prepro lint clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_CPU_VERSION)"
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: bench-optim

bench-optim: $(STAMP)
	$(BIN)/python bench/optim_step.py

clean:
	rm -rf $(VENV) .pytest_cache
