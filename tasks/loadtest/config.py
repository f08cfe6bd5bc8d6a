"""What a load test is asked to do (LoadProfile) and what it must meet (SLO).

These are also sections of the promotion spec, so they forbid unknown fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadProfile(_Strict):
    """How requests are sent. Bounded by duration or by request count (or both)."""

    endpoint: Literal["completions", "chat", "v2"] = Field(
        "completions", description="completions / chat (OpenAI API); v2: Open Inference Protocol /v2/models/{name}/infer"
    )
    mode: Literal["concurrency", "rate", "poisson", "sweep"] = "concurrency"
    concurrency: int = Field(4, ge=1, le=100_000, description="in-flight requests (mode: concurrency; a cap otherwise)")
    rate: float | None = Field(None, gt=0, description="requests per second (modes: rate, poisson)")
    burstiness: float = Field(1.0, gt=0, description="gamma shape for poisson arrivals; 1.0 is Poisson")
    num_requests: int | None = Field(None, ge=1)
    duration_s: float | None = Field(None, gt=0)
    warmup_s: float = Field(0.0, ge=0, description="requests started in this window are left out of the figures")
    cooldown_s: float = Field(0.0, ge=0, description="requests started in this window before the end are left out")
    input_tokens: int = Field(32, ge=1)
    output_tokens: int = Field(16, ge=1)
    dataset: str | None = Field(None, description="JSONL file of prompts instead of synthetic ones")
    seed: int = 0
    rows_per_request: int = Field(1, ge=1, le=100_000, description="endpoint v2: rows (examples) in each generated request")
    request_timeout_s: float = Field(60.0, gt=0)
    ignore_eos: bool = Field(True, description="ask the server for exactly output_tokens tokens (vLLM extension)")
    sweep_steps: int = Field(6, ge=2, le=50, description="mode sweep: points from synchronous to max throughput")
    sweep_refine: int = Field(2, ge=0, le=10, description="mode sweep: bisection steps between the last passing and first failing rate")

    @model_validator(mode="after")
    def _bounded(self) -> "LoadProfile":
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("bound the run: set num_requests or duration_s")
        # in a sweep, rate (when set) is the least rate the SLO must hold at
        if self.mode in ("rate", "poisson") and self.rate is None:
            raise ValueError(f"mode {self.mode!r} needs a rate (requests per second)")
        return self


class SLO(_Strict):
    """Limits a model must meet to be promoted. Unset limits are not checked."""

    ttft_p99_ms: float | None = Field(None, gt=0)
    tpot_p99_ms: float | None = Field(None, gt=0)
    e2e_p99_ms: float | None = Field(None, gt=0)
    max_error_rate: float = Field(0.0, ge=0, le=1)
    min_output_tokens_per_s: float | None = Field(None, ge=0)
    latency_p99_ms: float | None = Field(None, gt=0, description="p99 request latency (V2 load test of predictive models)")
    min_requests_per_s: float | None = Field(None, ge=0, description="least completed requests per second (V2 load test)")
