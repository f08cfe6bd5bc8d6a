#!/usr/bin/env bash
# The GPU check of issue 5, as one script for the device machine (run from the repo root):
#   run(command="bash bench/gpu/run_build_check.sh", carry=[".whl/gpu-quant"], timeout_s=540)
# after bench/gpu/prepare_wheels.sh here. It installs the carried wheels (--no-deps) into a
# venv that sees the machine's CUDA torch and transformers, then runs llmship's quantize stage
# with llm-compressor and autoawq on CUDA on the 1.0B random Llama, and leaves the figures and
# logs in $OUT.
set -euo pipefail
OUT=${OUT:-/tmp/llmship-gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -m venv --system-site-packages /tmp/venv-quant
/tmp/venv-quant/bin/pip install --no-deps --no-index -q .whl/gpu-quant/*.whl
/tmp/venv-quant/bin/python -c "import torch, transformers, llmcompressor, awq; print(torch.__version__, torch.cuda.is_available(), transformers.__version__)" | tee "$OUT/versions.txt"
export LLMSHIP_QUANT_PYTHON=/tmp/venv-quant/bin/python
# the bench itself needs only torch/transformers/tokenizers/pydantic/yaml, all in that venv
/tmp/venv-quant/bin/python bench/build_quantize.py --size 1b --device cuda --samples 64 --seq-len 512 \
    --work /tmp/llmship-bench 2>&1 | tee "$OUT/bench.log"
cp bench/results/build_quantize-1b-cuda.json "$OUT/" || true
cp /tmp/llmship-bench/out-*.quantize.log "$OUT/" 2>/dev/null || true
