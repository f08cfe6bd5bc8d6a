#!/usr/bin/env bash
# Fetch, on this (networked) machine, the small cp312 wheel set with which llm-compressor and
# autoawq both ran on an H100 (shared GPU-NOTES.md), into .whl/gpu-quant (gitignored), so the
# GPU check can carry it to a device machine that cannot reach PyPI.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.whl/gpu-quant
mkdir -p "$dest"
pip_dl() { .venv/bin/pip download --no-deps --only-binary=:all: --python-version 3.12 \
             --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
             --platform any -d "$dest" "$@"; }
pip_dl llmcompressor==0.14.0.1 compressed-tensors==0.19.0 auto-round==0.15.1 datasets==5.2.0 \
       multiprocess==0.70.19 dill==0.4.1 loguru==0.7.3 pydantic==2.12.5 pydantic-core==2.41.5 \
       annotated-types typing-inspection zstandard pyyaml xxhash
# autoawq publishes only its source; it builds into a pure-Python wheel
.venv/bin/pip wheel --no-deps -w "$dest" autoawq==0.2.9
du -sh "$dest"
