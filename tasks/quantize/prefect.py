"""The quantize stage's Prefect artifact: a markdown table of the quality gate's figures.
The task itself is tasks.prefect_tasks.quantize_task (cached on the content of its inputs)."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

from tasks.quantize.stage import QuantizedModel


def gate_markdown(r: QuantizedModel) -> str:
    return (
        f"### Quantization: {r.backend} {r.method} ({r.format})\n\n"
        "| figure | value |\n| --- | --- |\n"
        f"| held-out perplexity before | {r.ppl_before:.4f} |\n"
        f"| held-out perplexity after | {r.ppl_after:.4f} ({r.after_measured_on}) |\n"
        f"| increase | {r.ppl_increase:+.2%} (bound +{r.max_perplexity_increase:.2%}) |\n"
        f"| calibration | {r.calib_samples_used} samples from {r.calibration_source} |\n"
        f"| device | {r.device} |\n| time | {r.seconds_quantize:.1f} s quantize, {r.seconds_total:.1f} s total |\n"
    )


def publish_gate_artifact(result: QuantizedModel, name: str) -> None:
    create_markdown_artifact(markdown=gate_markdown(result), key=f"{name}-quantize")
