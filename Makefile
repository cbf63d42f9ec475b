# Entry points: `make test` (the full suite, what CI runs), `make test-fast` (unit tests only), `make demo`,
# `make bench`. Everything installs into .venv.
# GPU users: create .venv and install a CUDA torch into it first (README, "Installing on a GPU machine");
# the install step below keeps whatever torch .venv already has.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_CPU_VERSION ?= 2.13.0
STAMP := $(VENV)/.deps-installed
PYTEST_ARGS ?=

.PHONY: install test test-fast demo bench bench-optim bench-prepro bench-train gpu-check lint clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_CPU_VERSION)"
	$(BIN)/pip install -q -r requirements.txt -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Leaves out the tests marked (pytest.ini) as starting processes, training end to end, compiling kernels or
# running Triton's interpreter: under 2 minutes on a 2-core CPU.
FAST_MARKERS := not (subprocess or training or compile or interpreter)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

bench: bench-optim bench-prepro bench-train

bench-optim: $(STAMP)
	$(BIN)/python -m bench.optim_step

bench-prepro: $(STAMP)
	$(BIN)/python -m bench.prepro

bench-train: $(STAMP)
	$(BIN)/python -m bench.train_throughput

# The first run on a GPU machine, in one command (about nine minutes, no data or model download): kernel and
# CUDA-graph correctness, eager and compiled training speed, host syncs, optimizer step, DDP settings; results in
# bench/out/gpu_check.json and a printed table. Its CPU rehearsal (--smoke) runs inside `make test`.
gpu-check: $(STAMP)
	$(BIN)/python -m bench.gpu_check

# The main job on the embedded default: MiniLM-L6, two demo tasks, Adamax vs Adamax-SAGE, each at lr 1e-4 and
# 3e-4 (4 runs); tables at equal lr and with each optimizer at its best lr on dev.
demo: $(STAMP)
	$(BIN)/python experiments/demo/get_data.py --max_train 1000
	$(BIN)/python prepro_std.py --model minilm-l6 --root_dir data/demo/canonical \
	  --task_def experiments/demo/demo_task_def.yml --max_seq_len 128
	$(BIN)/python -m experiments.demo.run_demo --out_dir demo_out

# Linters on their own (the test suite runs them too): shell scripts and the Dockerfile.
lint: $(STAMP)
	$(BIN)/shellcheck --severity=style download.sh $$(find scripts experiments docker -name '*.sh')
	$(BIN)/hadolint Dockerfile

clean:
	rm -rf $(VENV) .pytest_cache
