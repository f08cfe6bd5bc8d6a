"""The load-test report: `vllm bench serve --save-result` keys, goodput, the SLO verdict.

`write_json` writes the same keys vllm writes (so existing tooling reads it) plus llmship's
own; `write_csv` the summary table; `write_records_csv` one row per request; `write_png`
the latency distributions (and, for a sweep, throughput against latency).
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

from pydantic import BaseModel, Field, computed_field

from .config import SLO, LoadProfile
from .metrics import METRICS, PERCENTILES

STATS = ("mean", "median", "std") + tuple(f"p{p}" for p in PERCENTILES)
_LABELS = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2EL"}
# per-request lists vllm writes with --save-detailed
_DETAILED = ("input_lens", "output_lens", "ttfts", "itls", "latencies", "start_times")


class RequestRecord(BaseModel):
    """One request's figures (times in ms; start in s from the run's start)."""

    start_s: float
    queued_ms: float = 0.0
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None
    itl_ms: list[float] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None
    detail: str = ""
    server: str = ""  # the backend that answered, when a front door named it


class SweepPoint(BaseModel):
    """One load level of a sweep."""

    label: str  # synchronous, throughput, or "rate 12.3/s"
    target_rate: float | None = None
    concurrency: int
    completed: int
    failed: int
    request_throughput: float
    output_throughput: float
    median_ttft_ms: float
    p99_ttft_ms: float
    median_tpot_ms: float
    p99_tpot_ms: float
    median_itl_ms: float
    p99_e2el_ms: float
    passed: bool
    violations: list[str] = Field(default_factory=list)


class LoadReport(BaseModel):
    # -- setup, as vllm writes it --
    date: str = ""
    backend: str = "openai"
    endpoint_type: str = "openai"
    label: str | None = None
    model_id: str = ""
    tokenizer_id: str | None = None
    num_prompts: int = 0
    request_rate: float | str = "inf"
    burstiness: float = 1.0
    max_concurrency: int | None = None
    # -- results, as vllm writes them --
    duration: float = 0.0
    completed: int = 0
    failed: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    request_throughput: float = 0.0
    request_goodput: float = 0.0
    output_throughput: float = 0.0
    total_token_throughput: float = 0.0
    max_output_tokens_per_s: float = 0.0
    max_concurrent_requests: int = 0
    mean_ttft_ms: float = 0.0
    median_ttft_ms: float = 0.0
    std_ttft_ms: float = 0.0
    p50_ttft_ms: float = 0.0
    p90_ttft_ms: float = 0.0
    p95_ttft_ms: float = 0.0
    p99_ttft_ms: float = 0.0
    mean_tpot_ms: float = 0.0
    median_tpot_ms: float = 0.0
    std_tpot_ms: float = 0.0
    p50_tpot_ms: float = 0.0
    p90_tpot_ms: float = 0.0
    p95_tpot_ms: float = 0.0
    p99_tpot_ms: float = 0.0
    mean_itl_ms: float = 0.0
    median_itl_ms: float = 0.0
    std_itl_ms: float = 0.0
    p50_itl_ms: float = 0.0
    p90_itl_ms: float = 0.0
    p95_itl_ms: float = 0.0
    p99_itl_ms: float = 0.0
    mean_e2el_ms: float = 0.0
    median_e2el_ms: float = 0.0
    std_e2el_ms: float = 0.0
    p50_e2el_ms: float = 0.0
    p90_e2el_ms: float = 0.0
    p95_e2el_ms: float = 0.0
    p99_e2el_ms: float = 0.0
    # -- llmship --
    base_url: str = ""
    mode: str = "concurrency"
    good_requests: int = 0
    error_rate: float = 0.0
    excluded_requests: int = 0  # in the warm-up / cool-down windows
    input_tokens_source: str = "usage"  # usage | tokenizer | estimate
    output_tokens_source: str = "usage"  # usage | tokenizer | chunks
    generator_cpu_s: float = 0.0  # process CPU time spent during the run
    passed: bool = False
    violations: list[str] = Field(default_factory=list)
    errors: dict[str, int] = Field(default_factory=dict)  # reason -> count
    error_examples: dict[str, str] = Field(default_factory=dict)  # reason -> one server message
    slo: SLO | None = None
    profile: LoadProfile | None = None
    records: list[RequestRecord] | None = None
    sweep: list[SweepPoint] | None = None
    max_rate_meeting_slo: float | None = None
    by_server: dict[str, "LoadReport"] | None = None  # behind a front door: each backend's share of the run

    @computed_field  # type: ignore[prop-decorator]
    @property
    def goodput(self) -> float:
        """Requests per second that met every SLO limit (= request_goodput)."""
        return self.request_goodput

    # ---------------------------------------------------------------- output
    def vllm_dict(self, detailed: bool = True) -> dict[str, Any]:
        """All fields, plus vllm's per-request lists when records were kept and `detailed`."""
        out = self.model_dump(mode="json", exclude={"records", "by_server"} if not detailed else {"by_server"})
        if self.by_server:
            out["by_server"] = {k: v.vllm_dict(detailed=False) for k, v in self.by_server.items()}
        if detailed and self.records is not None:
            recs = self.records
            out["input_lens"] = [r.input_tokens for r in recs]
            out["output_lens"] = [r.output_tokens for r in recs]
            out["ttfts"] = [(r.ttft_ms or 0.0) / 1000 for r in recs]
            out["itls"] = [[x / 1000 for x in r.itl_ms] for r in recs]
            out["latencies"] = [(r.e2el_ms or 0.0) / 1000 for r in recs]
            out["start_times"] = [r.start_s for r in recs]
        return out

    def write_json(self, path: str, detailed: bool = True) -> str:
        _mkparent(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.vllm_dict(detailed), f, indent=1)
        return path

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per metric (TTFT, TPOT, ITL, E2EL) with mean, median, std and percentiles in ms."""
        rows = []
        for m in METRICS:
            row: dict[str, Any] = {"metric": _LABELS[m]}
            for s in STATS:
                row[f"{s}_ms"] = round(getattr(self, f"{s}_{m}_ms"), 3)
            rows.append(row)
        return rows

    def write_csv(self, path: str) -> str:
        """The summary table, then the throughput figures as metric,value rows."""
        _mkparent(path)
        rows = self.summary_rows()
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(list(rows[0].keys()))
            for r in rows:
                w.writerow(list(r.values()))
            w.writerow([])
            w.writerow(["figure", "value"])
            for k in (
                "completed", "failed", "duration", "request_throughput", "request_goodput", "output_throughput",
                "total_token_throughput", "total_input_tokens", "total_output_tokens", "error_rate", "passed",
            ):
                w.writerow([k, getattr(self, k)])
            for reason, n in self.errors.items():
                w.writerow([f"error: {reason}", n])
            if self.sweep:
                w.writerow([])
                keys = list(SweepPoint.model_fields)
                w.writerow(keys)
                for p in self.sweep:
                    w.writerow([getattr(p, k) if k != "violations" else "; ".join(p.violations) for k in keys])
        return path

    def write_records_csv(self, path: str) -> str:
        _mkparent(path)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            keys = [k for k in RequestRecord.model_fields if k != "itl_ms"]
            w.writerow(keys + ["itl_ms"])
            for r in self.records or []:
                w.writerow([getattr(r, k) for k in keys] + [" ".join(f"{x:.3f}" for x in r.itl_ms)])
        return path

    def write_png(self, path: str) -> str:
        from .plot import plot_report

        _mkparent(path)
        plot_report(self, path)
        return path

    def write_all(self, folder: str, stem: str = "loadtest") -> dict[str, str]:
        """JSON, CSV and PNG (and the per-request CSV when records were kept) into a folder."""
        os.makedirs(folder, exist_ok=True)
        out = {
            "json": self.write_json(os.path.join(folder, f"{stem}.json")),
            "csv": self.write_csv(os.path.join(folder, f"{stem}.csv")),
            "png": self.write_png(os.path.join(folder, f"{stem}.png")),
        }
        if self.records is not None:
            out["records_csv"] = self.write_records_csv(os.path.join(folder, f"{stem}-requests.csv"))
        return out

    def markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"### Load test {verdict}: {self.model_id} at {self.base_url}",
            "",
            f"mode {self.mode}, concurrency {self.max_concurrency}, rate {self.request_rate}; "
            f"{self.completed} completed, {self.failed} failed in {self.duration:.1f} s",
            "",
            f"- request throughput: {self.request_throughput:.2f} req/s (goodput {self.request_goodput:.2f} req/s)",
            f"- output throughput: {self.output_throughput:.1f} tok/s; total {self.total_token_throughput:.1f} tok/s",
        ]
        if self.max_rate_meeting_slo is not None:
            lines.append(f"- highest rate meeting the SLO: {self.max_rate_meeting_slo:.2f} req/s")
        lines += ["", "| metric | mean | median | p90 | p99 |", "| --- | ---: | ---: | ---: | ---: |"]
        for m in METRICS:
            g = lambda s: getattr(self, f"{s}_{m}_ms")  # noqa: E731
            lines.append(f"| {_LABELS[m]} (ms) | {g('mean'):.2f} | {g('median'):.2f} | {g('p90'):.2f} | {g('p99'):.2f} |")
        if self.violations:
            lines += ["", "**SLO violations**", ""] + [f"- {v}" for v in self.violations]
        if self.errors:
            lines += ["", "**Errors**", ""] + [f"- {k}: {n}" for k, n in self.errors.items()]
        return "\n".join(lines)


def evaluate_slo(report: LoadReport, slo: SLO | None) -> list[str]:
    """Human lines for every limit the run broke; empty when it passed."""
    out = []
    total = report.completed + report.failed
    if report.completed == 0:
        out.append(f"no request completed ({total} sent)")
    if slo is None:
        return out
    for limit, attr, name in (
        (slo.ttft_p99_ms, "p99_ttft_ms", "p99 TTFT"),
        (slo.tpot_p99_ms, "p99_tpot_ms", "p99 TPOT"),
        (slo.e2e_p99_ms, "p99_e2el_ms", "p99 E2EL"),
    ):
        if limit is not None and report.completed and getattr(report, attr) > limit:
            out.append(f"{name} {getattr(report, attr):.1f} ms > limit {limit:g} ms")
    if total and report.error_rate > slo.max_error_rate:
        reasons = ", ".join(f"{k} x{n}" for k, n in report.errors.items())
        out.append(
            f"error rate {report.error_rate:.1%} > limit {slo.max_error_rate:.1%} "
            f"({report.failed} of {total} failed: {reasons})"
        )
    if slo.min_output_tokens_per_s is not None and report.output_throughput < slo.min_output_tokens_per_s:
        out.append(
            f"output throughput {report.output_throughput:.1f} tok/s < limit {slo.min_output_tokens_per_s:g} tok/s"
        )
    return out


def _mkparent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
