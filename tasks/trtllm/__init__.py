"""TensorRT-LLM: engine builds (1.2 and older) and trtllm-serve set-ups for the PyTorch backend."""

from tasks.trtllm.build import (
    TrtllmArtifact,
    build_engine,
    build_for_spec,
    explain_failure,
    quantizes_in_build,
    verify_engine_dir,
)
from tasks.trtllm.commands import build_cmd, checkpoint_cmd, choose_path, qformat, serve_cmd, serve_options

__all__ = ["TrtllmArtifact", "build_engine", "build_for_spec", "quantizes_in_build", "build_cmd", "checkpoint_cmd", "choose_path", "explain_failure",
           "qformat", "serve_cmd", "serve_options", "verify_engine_dir"]
