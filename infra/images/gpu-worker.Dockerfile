# The GPU build worker: TensorRT-LLM's release image (trtllm-build, convert_checkpoint.py,
# ModelOpt, trtllm-serve, CUDA torch) + llmship + the AWQ backends in their own venv.
# Build: docker build -f infra/images/gpu-worker.Dockerfile -t llmship-gpu-worker:1.2.0 .
ARG TRTLLM_IMAGE=nvcr.io/nvidia/tensorrt-llm/release:1.2.0
FROM ${TRTLLM_IMAGE}

WORKDIR /opt/llmship
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY tasks ./tasks
COPY deployments ./deployments
# llmship and the Prefect Kubernetes worker side, into the image's Python (next to tensorrt_llm)
RUN pip install --no-cache-dir . "prefect-kubernetes==0.8.0"

# The AWQ backends see the image's CUDA torch through system site-packages but keep their own
# compressed-tensors / transformers pins (GPU-NOTES: this --no-deps set ran both on an H100).
RUN python -m venv --system-site-packages /opt/venv-quant \
 && /opt/venv-quant/bin/pip install --no-cache-dir --no-deps \
      "llmcompressor==0.14.0.1" "compressed-tensors==0.19.0" "auto-round==0.15.1" "datasets==5.2.0" \
      "multiprocess==0.70.19" "dill==0.4.1" "loguru==0.7.3" "transformers==5.17.0" \
 && /opt/venv-quant/bin/pip wheel --no-deps -w /tmp/awq "autoawq==0.2.9" \
 && /opt/venv-quant/bin/pip install --no-cache-dir --no-deps /tmp/awq/*.whl && rm -rf /tmp/awq

ENV LLMSHIP_QUANT_PYTHON=/opt/venv-quant/bin/python \
    LLMSHIP_TRTLLM_EXAMPLES=/app/tensorrt_llm/examples \
    LLMSHIP_WORK_DIR=/scratch/llmship
