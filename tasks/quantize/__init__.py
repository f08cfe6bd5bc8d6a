"""Quantization: AWQ through llm-compressor or autoawq, ModelOpt int4_awq / fp8 for TensorRT-LLM,
each followed by a held-out perplexity gate. The backends run in their own interpreter."""

from tasks.quantize.stage import QuantizedModel, calibration_texts, check_gate, quant_python, quantize

__all__ = ["QuantizedModel", "calibration_texts", "check_gate", "quant_python", "quantize"]
