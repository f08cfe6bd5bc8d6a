"""Load testing over the Open Inference Protocol (V2): `POST /v2/models/{name}/infer`.

The same engine as the LLM load test (tasks/loadtest/engine.py): request bytes built before
the clock starts, the raw-asyncio keep-alive client (client.Conn), the completion callback
handing the connection its next request, concurrency / rate / poisson / sweep modes, warm-up
and cool-down windows, the shared-loop quiet phase. Only the request bodies and the reading
of responses differ: a V2 request is one JSON body answered by one JSON body, so latency is
request sent -> last response byte (vLLM's E2EL), and a response counts only when it is
HTTP 200 with a non-empty `outputs` list.

Inputs, in this order: `payloads` given by the caller; `profile.dataset` (a JSONL of V2
request bodies); `inputs` (TensorSpecs, e.g. from an MLflow signature); the server's own
metadata at `GET /v2/models/{name}`. Generated requests carry `profile.rows_per_request`
rows each, values drawn per datatype, every request distinct (up to 10,000, then cycling).

    from tasks.loadtest.v2 import run_v2_load_test
    report = run_v2_load_test(base_url, "iris", LoadProfile(endpoint="v2", concurrency=4, num_requests=500),
                              SLO(latency_p99_ms=50, min_requests_per_s=100))
    report.passed, report.violations, report.p99_e2el_ms, report.request_throughput
    report.write_all("out/")   # loadtest.json (vLLM's keys where they apply), .csv, .png
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from urllib.parse import quote

from pydantic import computed_field

from tasks.errors import BadInput

from . import client, engine
from .client import Req, Target
from .config import SLO, LoadProfile
from .metrics import RequestResult, _error_message, aggregate, split_http
from .report import LoadReport, RequestRecord

try:
    from orjson import dumps as _dumps, loads as _loads
except ImportError:  # pragma: no cover
    import json

    _loads = json.loads

    def _dumps(obj) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


_MAX_DISTINCT = 10_000
BACKEND = "openinference-v2"
_STATS = ("mean", "median", "std", "p50", "p90", "p95", "p99")


# ------------------------------------------------------------------ the report
class V2Report(LoadReport):
    """A LoadReport for V2: latency is vLLM's E2EL (`*_e2el_ms`); token and TTFT/TPOT/ITL keys stay 0."""

    backend: str = BACKEND
    endpoint_type: str = "v2"
    protocol: str = "v2"
    infer_path: str = ""
    rows_per_request: int | None = None  # generated requests; None for a payload file (rows vary)
    total_rows: int = 0  # rows (examples) in completed requests, from the requests' first input
    input_source: str = ""  # payloads | dataset:<path> | signature | metadata

    @computed_field  # type: ignore[prop-decorator]
    @property
    def row_throughput(self) -> float:
        """Inferences (rows) per second."""
        return self.total_rows / self.duration if self.duration > 0 else 0.0

    def summary_rows(self) -> list[dict]:
        row: dict = {"metric": "latency"}
        for s in _STATS:
            row[f"{s}_ms"] = round(getattr(self, f"{s}_e2el_ms"), 3)
        return [row]

    def write_csv(self, path: str) -> str:
        import csv

        from .report import _mkparent

        _mkparent(path)
        rows = self.summary_rows()
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(list(rows[0].keys()))
            for r in rows:
                w.writerow(list(r.values()))
            w.writerow([])
            w.writerow(["figure", "value"])
            for k in ("completed", "failed", "duration", "request_throughput", "request_goodput", "row_throughput",
                      "total_rows", "error_rate", "passed"):
                w.writerow([k, getattr(self, k)])
            for reason, n in self.errors.items():
                w.writerow([f"error: {reason}", n])
            if self.sweep:
                w.writerow([])
                keys = ["label", "target_rate", "concurrency", "completed", "failed", "request_throughput",
                        "p99_e2el_ms", "passed", "violations"]
                w.writerow(keys)
                for p in self.sweep:
                    w.writerow([getattr(p, k) if k != "violations" else "; ".join(p.violations) for k in keys])
        return path

    def write_png(self, path: str) -> str:
        from .report import _mkparent
        from .v2_plot import plot_v2_report

        _mkparent(path)
        plot_v2_report(self, path)
        return path

    def markdown(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"### V2 load test {verdict}: {self.model_id} at {self.base_url}",
            "",
            f"mode {self.mode}, concurrency {self.max_concurrency}, rate {self.request_rate}; "
            f"{self.completed} completed, {self.failed} failed in {self.duration:.1f} s; inputs from {self.input_source}",
            "",
            f"- request throughput: {self.request_throughput:.2f} req/s (goodput {self.request_goodput:.2f} req/s), "
            f"{self.row_throughput:.1f} rows/s",
            f"- error rate: {self.error_rate:.2%}",
        ]
        if self.max_rate_meeting_slo is not None:
            lines.append(f"- highest rate meeting the SLO: {self.max_rate_meeting_slo:.2f} req/s")
        lines += ["", "| metric | mean | median | p90 | p99 |", "| --- | ---: | ---: | ---: | ---: |",
                  f"| latency (ms) | {self.mean_e2el_ms:.2f} | {self.median_e2el_ms:.2f} | {self.p90_e2el_ms:.2f} "
                  f"| {self.p99_e2el_ms:.2f} |"]
        if self.violations:
            lines += ["", "**SLO violations**", ""] + [f"- {v}" for v in self.violations]
        if self.errors:
            lines += ["", "**Errors**", ""] + [f"- {k}: {n}" for k, n in self.errors.items()]
        return "\n".join(lines)


def evaluate_v2_slo(report: LoadReport, slo: SLO | None) -> list[str]:
    """Human lines for every limit a V2 run broke: p99 latency, throughput, error rate (empty when it passed)."""
    out = []
    total = report.completed + report.failed
    if report.completed == 0:
        out.append(f"no request completed ({total} sent)")
    if slo is None:
        return out
    for limit, name in ((slo.latency_p99_ms, "p99 latency"), (slo.e2e_p99_ms, "p99 E2EL")):
        if limit is not None and report.completed and report.p99_e2el_ms > limit:
            out.append(f"{name} {report.p99_e2el_ms:.1f} ms > limit {limit:g} ms")
    if slo.min_requests_per_s is not None and report.request_throughput < slo.min_requests_per_s:
        out.append(f"request throughput {report.request_throughput:.1f} req/s < limit {slo.min_requests_per_s:g} req/s")
    if total and report.error_rate > slo.max_error_rate:
        reasons = ", ".join(f"{k} x{n}" for k, n in report.errors.items())
        out.append(f"error rate {report.error_rate:.1%} > limit {slo.max_error_rate:.1%} "
                   f"({report.failed} of {total} failed: {reasons})")
    return out


def _latency_limit(slo: SLO | None) -> float | None:
    if slo is None:
        return None
    limits = [x for x in (slo.latency_p99_ms, slo.e2e_p99_ms) if x is not None]
    return min(limits) if limits else None


# ------------------------------------------------------------------ requests
def infer_path(target: Target, model: str, version: str | None = None) -> str:
    name = quote(model, safe="")
    if version:
        return f"{target.prefix}/v2/models/{name}/versions/{quote(version, safe='')}/infer"
    return f"{target.prefix}/v2/models/{name}/infer"


def build_v2_request(target: Target, path: str, body: bytes, headers: dict[str, str] | None) -> bytes:
    """The whole HTTP request as one bytes object, built before the clock starts."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {target.hostport}", "User-Agent: llmship-loadtest",
             "Content-Type: application/json", "Accept: application/json", f"Content-Length: {len(body)}"]
    for k, v in (headers or {}).items():
        if k.lower() == "host":
            lines[1] = f"Host: {v}"
        else:
            lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _rows_of(body: dict) -> int:
    try:
        shape = body["inputs"][0]["shape"]
        return int(shape[0]) if shape else 1
    except (KeyError, IndexError, TypeError, ValueError):
        return 1


async def resolve_payloads(
    target: Target, base_url: str, model: str, profile: LoadProfile, payloads: list[dict] | None,
    inputs: list | None, headers: dict[str, str] | None, expected: int,
) -> tuple[list[dict], str]:
    """The request bodies to send and where they came from (see the module docstring for the order)."""
    from tasks.predictive.signature import read_v2_payloads, specs_from_metadata, v2_requests

    if payloads:
        from tasks.predictive.signature import check_v2_request

        for i, p in enumerate(payloads):
            why = check_v2_request(p)
            if why:
                raise BadInput("load_test", f"payload {i}", f"not a V2 request: {why}", "pass V2 request bodies")
        return list(payloads), "payloads"
    if profile.dataset:
        return read_v2_payloads(profile.dataset), f"dataset:{profile.dataset}"
    n = max(1, min(expected, _MAX_DISTINCT))
    if inputs:
        return v2_requests(inputs, n, profile.rows_per_request, profile.seed), "signature"
    status, meta = await client.get_json(target, f"{target.prefix}/v2/models/{quote(model, safe='')}", headers)
    if status == 404 or (status != 200 and meta is None):
        raise BadInput("load_test", f"{base_url} model {model!r}", f"GET /v2/models/{model} answered HTTP {status}",
                       "check the served model name (a V2 server lists it at /v2/repository/index on MLServer)")
    specs = specs_from_metadata(meta)
    if not specs:
        raise BadInput("load_test", f"{base_url} model {model!r}", "the model's metadata declares no inputs",
                       "give load.dataset (a JSONL of V2 requests), the MLflow signature, or declare inputs in model-settings")
    return v2_requests(specs, n, profile.rows_per_request, profile.seed), "metadata"


# ------------------------------------------------------------------ the run
def _v2_result(req: Req, t0: float, rows: list[int]) -> RequestResult:
    r = RequestResult(idx=req.idx, start=req.t_start - t0, queued=max(0.0, req.t_start - req.t_sched))
    r.input_tokens = rows[req.prompt]  # rows of the request (the report sums them as total_rows)
    r.input_src = "rows"
    r.output_src = "rows"
    if req.error is not None:
        r.error, r.detail = req.error, req.error_detail
        return r
    raw = req.pieces[0] if len(req.pieces) == 1 else b"".join(req.pieces)
    end = raw.find(b"\r\n\r\n")
    head = raw[:end].lower() if end > 0 else b""
    if raw.startswith(b"HTTP/1.1 200 ") and end > 0 and b"transfer-encoding" not in head:
        status, body = 200, raw[end + 4 :]  # the common case: one JSON body with a content-length
    else:  # interim responses, chunked bodies, errors: the general reader
        status, _headers, body, _t = split_http(req.pieces, req.times)
    if status != 200:
        r.error = f"HTTP {status}" if status else "not an HTTP response"
        r.detail = _error_message(body)
        return r
    try:
        obj = _loads(body)
    except ValueError:
        r.error, r.detail = "bad JSON in the response", body[:200].decode("utf-8", "replace")
        return r
    if not isinstance(obj, dict) or not obj.get("outputs"):
        r.error = "no outputs in the response"
        r.detail = body[:200].decode("utf-8", "replace")
        return r
    r.latency = req.t_done - req.t_start
    return r


class _V2Run(engine._Run):
    """The engine's run, reading V2 responses instead of SSE streams."""

    def _result(self, req: Req) -> RequestResult:
        return _v2_result(req, self.t0, self.prep.rows)


def _v2_report(run: _V2Run, results: list[RequestResult], slo: SLO | None, keep_records: bool,
               label: str | None) -> V2Report:
    p, prep = run.p, run.prep
    t0 = run.t0
    if p.warmup_s > 0 or p.cooldown_s > 0:
        w0 = p.warmup_s
        end = (run.t_stop if run.t_stop is not None else run.t_finish) - t0
        w1 = end - p.cooldown_s
        kept = [r for r in results if w0 <= (r.start - r.queued) <= w1]
        ends = [r.start + (r.latency if r.ok else 0.0) for r in kept]
        duration = (max(ends) - w0) if ends else 0.0
    else:
        kept = results
        duration = run.t_finish - t0
    agg = aggregate(kept, duration, (None, None, _latency_limit(slo)))
    # token figures do not exist for V2: the rows live in total_rows, not in the token keys
    total_rows = agg.pop("total_input_tokens")
    for k in ("total_output_tokens", "output_throughput", "total_token_throughput", "max_output_tokens_per_s"):
        agg[k] = 0
    for m in ("ttft", "tpot", "itl"):
        for s in _STATS:
            agg[f"{s}_{m}_ms"] = 0.0
    errors: dict[str, int] = {}
    examples: dict[str, str] = {}
    for r in kept:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
            if r.error not in examples and r.detail:
                examples[r.error] = r.detail[:300]
    total = len(kept)
    generated = not (prep.source == "payloads" or prep.source.startswith("dataset:"))
    rep = V2Report(
        date=datetime.now().strftime("%Y%m%d-%H%M%S"), label=label, model_id=prep.model, num_prompts=total,
        request_rate=p.rate if p.mode in ("rate", "poisson") and p.rate else "inf", burstiness=p.burstiness,
        max_concurrency=p.concurrency, base_url=prep.base_url, mode=p.mode,
        error_rate=(agg["failed"] / total) if total else 0.0, excluded_requests=len(results) - len(kept),
        input_tokens_source="rows", output_tokens_source="rows", generator_cpu_s=run.cpu, errors=errors,
        error_examples=examples, slo=slo, profile=p, infer_path=prep.path,
        rows_per_request=p.rows_per_request if generated else None, total_rows=total_rows, input_source=prep.source,
        total_input_tokens=0, **agg,
    )
    if keep_records:
        rep.records = [
            RequestRecord(start_s=r.start, queued_ms=r.queued * 1000, e2el_ms=r.latency * 1000 if r.ok else None,
                          input_tokens=r.input_tokens, error=r.error, detail=r.detail if not r.ok else "")
            for r in kept
        ]
    rep.violations = evaluate_v2_slo(rep, slo)
    rep.passed = not rep.violations
    return rep


async def _single_v2(prep, profile: LoadProfile, slo: SLO | None, progress: bool, keep_records: bool,
                     label: str | None) -> V2Report:
    run = _V2Run(prep, profile, progress, label or f"{prep.model} v2 {profile.mode}")
    await run.execute()
    await engine._wait_quiet()
    results = await engine._analyse(run)
    return _v2_report(run, results, slo, keep_records, label)


# ------------------------------------------------------------------ public API
async def arun_v2_load_test(
    base_url: str,
    model: str,
    profile: LoadProfile,
    slo: SLO | None = None,
    progress: bool = False,
    *,
    payloads: list[dict] | None = None,
    inputs: list | None = None,
    model_version: str | None = None,
    headers: dict[str, str] | None = None,
    keep_records: bool = False,
    label: str | None = None,
) -> V2Report:
    """Load-test a V2 (Open Inference Protocol) model; the report carries the SLO verdict.

    Several calls may run at once in one event loop (with each other and with LLM runs).
    Raises StageFailed when the server cannot be reached, BadInput for a bad URL, model or payload file.
    """
    target = client.parse_target(base_url)
    if not model:
        raise BadInput("load_test", base_url, "no model name", hint="pass the served model name (GET /v2/models/NAME)")
    if profile.endpoint != "v2":
        profile = profile.model_copy(update={"endpoint": "v2"})
    await client.check_reachable(target, base_url)
    if profile.num_requests is not None:
        expected = profile.num_requests
    elif profile.mode in ("rate", "poisson") and profile.rate:
        expected = int(profile.rate * (profile.duration_s or 0) * 1.2) + 16
    else:
        expected = int(profile.concurrency * (profile.duration_s or 0) * 20) + 16
    bodies, source = await resolve_payloads(target, base_url, model, profile, payloads, inputs, headers, expected)
    path = infer_path(target, model, model_version)
    raw = [build_v2_request(target, path, _dumps(b), headers) for b in bodies]
    prep = engine._Prepared(base_url, target, model, False, [], raw, None, None, headers)
    prep.rows = [_rows_of(b) for b in bodies]  # type: ignore[attr-defined]
    prep.source = source  # type: ignore[attr-defined]
    prep.path = path  # type: ignore[attr-defined]
    if profile.mode == "sweep":
        return await engine._sweep(prep, profile, slo, progress, keep_records, label, single=_single_v2)
    return await _single_v2(prep, profile, slo, progress, keep_records, label)


def run_v2_load_test(base_url: str, model: str, profile: LoadProfile, slo: SLO | None = None, progress: bool = False,
                     **kwargs) -> V2Report:
    """Synchronous `arun_v2_load_test`, on uvloop when installed (its own thread inside a running loop)."""
    coro_args = (base_url, model, profile, slo, progress)

    def _run():
        factory = None
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(arun_v2_load_test(*coro_args, **kwargs))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run()
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(_run).result()


__all__ = ["V2Report", "arun_v2_load_test", "run_v2_load_test", "evaluate_v2_slo", "infer_path", "build_v2_request"]
