"""The production checklist (tasks/checklist.py): every rule passes, warns and fails; strict exits 2."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tasks.checklist import RULES, enforce, evaluate_checklist, expected_in_flight
from tasks.errors import BadInput
from tasks.preflight import plan_memory
from tasks.spec import parse_spec

ROOT = Path(__file__).resolve().parents[1]
LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "torch_dtype": "bfloat16"}
LLAMA_70B = {**LLAMA_8B, "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64, "intermediate_size": 28672}


@pytest.fixture(scope="module")
def configs(tmp_path_factory) -> dict[str, Path]:
    """Config-only model folders: the plan counts parameters from config.json (no weights needed)."""
    out = {}
    for name, cfg in (("8b", LLAMA_8B), ("70b", LLAMA_70B)):
        d = tmp_path_factory.mktemp(name)
        (d / "config.json").write_text(json.dumps(cfg))
        out[name] = d
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store")


def kserve(store: Path | None = None, **over) -> dict:
    """A production-shaped KServe spec: every rule passes on it (with a fitting plan)."""
    d = {
        "name": "m", "model": {"source": "hf://o/m@r"},
        "engine": {"args": {"max_num_seqs": 32, "gpu_memory_utilization": 0.9}},
        "target": {"kind": "kserve", "namespace": "llm", "deployment_mode": "Standard",
                   "prometheus_url": "http://prometheus:9090", "gpu": {"memory_gib": 80},
                   "keda": {"enabled": True, "min_replicas": 2, "max_replicas": 4}},
        "storage": {"uri": "pvc://models/m", "pvc_mount_root": str(store or "/nonexistent")},
        "load": {"concurrency": 8, "num_requests": 200},
        "slo": {"ttft_p99_ms": 500, "tpot_p99_ms": 50},
    }
    return _merge(d, over)


def local(store: Path, **over) -> dict:
    d = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    d["storage"]["uri"] = str(store)
    return _merge(d, over)


def _merge(base: dict, over: dict) -> dict:
    out = json.loads(json.dumps(base))
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def status(data: dict, rule: str, plan_dir: Path | None = None, probe: bool = True) -> tuple[str, str, str]:
    spec = parse_spec(data)
    plan = plan_memory(str(plan_dir), spec) if plan_dir else None
    r = evaluate_checklist(spec, plan, probe_storage=probe).result(rule)
    return r.status, r.why, r.what_to_do


@pytest.fixture
def pvc(tmp_path) -> Path:
    (tmp_path / "models").mkdir()
    return tmp_path


# rule -> status -> (spec builder, plan folder key or None); every rule has all three
def cases(pvc: Path, store: Path) -> dict[str, dict[str, tuple[dict, str | None]]]:
    k = lambda **o: kserve(pvc, **o)  # noqa: E731
    small_gpu = {"target": {"gpu": {"memory_gib": 16}}}
    mid_gpu = {"target": {"gpu": {"memory_gib": 24}}}  # the 8B fits here in fp8, not in bf16
    return {
        "gpu-memory": {"pass": (k(), "8b"), "warn": (k(), None), "fail": (k(**small_gpu), "70b")},
        "quantization": {"pass": (k(), "8b"), "warn": (k(), None), "fail": (k(**mid_gpu), "8b")},
        "storage": {"pass": (k(), None), "warn": (k(storage={"uri": "s3://bucket/m"}), "no-probe"),
                    "fail": (k(storage={"pvc_mount_root": str(pvc / "nothing-mounted")}), None)},
        "serving-runtime": {"pass": (k(), None), "warn": (k(engine={"image": "my/vllm"}), None),
                            "fail": (local(store, engine={"kind": "tensorrt-llm"}), None)},
        "autoscaling": {"pass": (k(), None), "warn": (k(target={"keda": {"enabled": False}, "min_replicas": 2,
                                                                "max_replicas": 2}), None),
                        "fail": (k(target={"deployment_mode": "Knative"}), None)},
        "warm-up": {"pass": (k(), None), "warn": (k(warmup={"min_rounds": 1, "max_rounds": 1}), None),
                    "fail": (k(warmup={"enabled": False}), None)},
        "monitoring": {"pass": (k(), None), "warn": (local(store), None),
                       "fail": (k(storage={"uri": str(store)}), None)},  # KServe cannot load a local folder: no render
        "load-test-slo": {"pass": (k(), None), "warn": (k(load={"num_requests": 32}), None),
                          "fail": (k(slo={"ttft_p99_ms": None, "tpot_p99_ms": None}), None)},
        "replicas": {"pass": (k(), None), "warn": (local(store), None),
                     "fail": (k(target={"keda": {"min_replicas": 1}}), None)},
        "gpu-memory-utilization": {"pass": (k(), None), "warn": (k(engine={"args": {"gpu_memory_utilization": 0.7}}), None),
                                   "fail": (k(engine={"args": {"gpu_memory_utilization": 0.98}}), None)},
        "batch-size": {"pass": (k(), None), "warn": (k(engine={"args": {"max_num_seqs": 4}}, load={"concurrency": 2}), None),
                       "fail": (k(engine={"args": {"max_num_seqs": 4}}), None)},
        "metrics": {"pass": (k(), None), "warn": (k(canary={"no_data_fails": False}), None),
                    "fail": (k(target={"prometheus_url": None}), None)},
    }


def test_every_rule_has_a_pass_warn_and_fail_case(pvc, store):
    c = cases(pvc, store)
    assert list(c) == list(RULES)
    assert all(set(v) == {"pass", "warn", "fail"} for v in c.values())


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("want", ["pass", "warn", "fail"])
def test_rule(rule, want, pvc, store, configs):
    data, plan = cases(pvc, store)[rule][want]
    got, why, todo = status(data, rule, configs.get(plan) if plan else None, probe=plan != "no-probe")
    assert got == want, (rule, why)
    assert why
    if want != "pass":
        assert todo, f"{rule} {want} says what to do"


def test_the_production_shaped_spec_passes_everything(pvc, configs):
    spec = parse_spec(kserve(pvc))
    r = evaluate_checklist(spec, plan_memory(str(configs["8b"]), spec))
    assert [x.rule for x in r.results if x.status != "pass"] == [] and r.passed


def test_local_target_warns_where_a_rule_cannot_apply(store):
    r = evaluate_checklist(parse_spec(local(store)), None)
    for rule in ("replicas", "autoscaling", "monitoring"):
        assert r.result(rule).status == "warn" and "cannot apply" in r.result(rule).why
    assert r.result("metrics").status == "pass"  # the local canary reads each server's /metrics
    assert r.result("storage").status == "pass"


def test_quantized_spec_that_fits_passes_the_quantization_rule(pvc, configs):
    spec = parse_spec(kserve(pvc, target={"gpu": {"memory_gib": 24}}, quantization={"method": "fp8"}))
    r = evaluate_checklist(spec, plan_memory(str(configs["8b"]), spec))
    assert r.result("quantization").status == "pass" and r.result("gpu-memory").status == "pass"


def test_storage_local_folder_under_a_file_fails(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    got, why, _ = status(local(tmp_path / "a-file" / "store"), "storage")
    assert got == "fail" and "not a folder" in why


def test_rate_mode_in_flight_follows_the_slo_latency():
    spec = parse_spec(kserve(None, load={"mode": "rate", "rate": 10, "concurrency": 64, "num_requests": 200},
                             slo={"e2e_p99_ms": 2000}))
    n, how = expected_in_flight(spec)
    assert n == 20 and "load.rate 10/s" in how
    assert evaluate_checklist(spec, None, probe_storage=False).result("batch-size").status == "pass"  # 32 >= 20
    spec.engine.args.max_num_seqs = 16
    r = evaluate_checklist(spec, None, probe_storage=False).result("batch-size")
    assert r.status == "fail" and "max_num_seqs 16 < 20" in r.why


def test_waiver_accepts_a_rule_with_its_reason_and_strict_then_passes(pvc):
    data = kserve(pvc, target={"keda": {"min_replicas": 1}}, checks={"strict": True,
                                                                      "waive": {"replicas": "dev cluster with one GPU"}})
    spec = parse_spec(data)
    r = evaluate_checklist(spec, None)
    rep = r.result("replicas")
    assert rep.status == "waived" and rep.unwaived == "fail" and rep.waived_because == "dev cluster with one GPU"
    assert "waived: dev cluster" in next(row for row in r.rows() if row["rule"] == "replicas")["why"]
    enforce(r, spec)  # nothing else fails


def test_waivers_name_known_rules_and_give_a_reason():
    with pytest.raises(BadInput) as e:
        parse_spec(kserve(None, checks={"waive": {"replica": "typo"}}))
    assert "checks.waive" in e.value.detail and "unknown rule 'replica'" in e.value.detail
    with pytest.raises(BadInput) as e:
        parse_spec(kserve(None, checks={"waive": {"replicas": " "}}))
    assert "needs a reason" in e.value.detail


def test_enforce_raises_bad_input_naming_the_rule_only_under_strict(pvc):
    data = kserve(pvc, warmup={"enabled": False}, target={"keda": {"min_replicas": 1}})
    spec = parse_spec(data)
    report = evaluate_checklist(spec, None)
    assert enforce(report, spec) is report  # not strict: shown, not enforced
    spec = parse_spec({**data, "checks": {"strict": True}})
    with pytest.raises(BadInput) as e:
        enforce(evaluate_checklist(spec, None), spec)
    err = e.value
    assert err.exit_code == 2 and err.stage == "checklist" and err.obj == "warm-up"
    assert err.render().startswith("[checklist] warm-up: warm-up is off")
    assert "what to do: set warmup.enabled: true" in err.render() and "replicas:" in err.detail


def test_table_artifact_rows_and_publish():
    from prefect import flow
    from prefect.artifacts import Artifact

    from tasks.checklist import publish_checklist_artifact

    report = evaluate_checklist(parse_spec(kserve(None, name="checklist-artifact")), None, probe_storage=False)
    assert [r["rule"] for r in report.rows()] == list(RULES)
    assert set(report.rows()[0]) == {"rule", "section", "status", "why", "what to do"}

    @flow
    def publish():
        return publish_checklist_artifact(report)

    publish()
    art = Artifact.get("checklist-artifact-checklist")
    assert art is not None and "batch-size" in str(art.data) and "what to do" in str(art.data)


# ------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def app():
    import typer

    from flows import cli_checks

    a = typer.Typer()
    cli_checks.register(a)

    @a.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the group
        pass

    return a


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_cli_prints_the_table_and_exits_0_when_not_strict(app, tmp_path, store):
    r = CliRunner().invoke(app, ["checklist", str(write(tmp_path, local(store, warmup={"enabled": False})))])
    assert r.exit_code == 0, r.output
    assert "warm-up" in r.output and "fail" in r.output and "batch-size" in r.output
    r = CliRunner().invoke(app, ["checklist", str(write(tmp_path, local(store))), "--json", "--no-probe"])
    assert r.exit_code == 0 and json.loads(r.output)["results"][2]["rule"] == "storage"


def test_cli_strict_exits_2_naming_the_rule_and_deploys_nothing(app, tmp_path, store):
    spec = write(tmp_path, local(store, warmup={"enabled": False}, checks={"strict": True}))
    r = CliRunner().invoke(app, ["checklist", str(spec)])
    assert r.exit_code == 2, r.output
    assert "[checklist] warm-up: warm-up is off" in r.output and "what to do: set warmup.enabled: true" in r.output
    assert not any(store.iterdir())  # nothing published, no state, no server record
    r = CliRunner().invoke(app, ["checklist", str(write(tmp_path, local(store, warmup={"enabled": False}))), "--strict"])
    assert r.exit_code == 2 and "[checklist] warm-up:" in r.output


def test_cli_plans_from_a_file_source(app, tmp_path, configs, store):
    d = local(store)
    d["model"]["source"] = f"file://{configs['8b']}"
    r = CliRunner().invoke(app, ["checklist", str(write(tmp_path, d)), "--json"])
    assert r.exit_code == 0, r.output
    out = {x["rule"]: x for x in json.loads(r.output)["results"]}
    assert out["gpu-memory"]["status"] == "pass" and "fits" in out["gpu-memory"]["why"]


def test_promote_with_strict_stops_at_the_checklist_before_anything_is_deployed(tmp_path, tiny_model):
    store = tmp_path / "a-file"
    store.write_text("not a folder")  # the storage rule fails; unwired, publish fails on it too (cheaply)
    d = local(tmp_path, checks={"strict": True})
    d["model"]["source"] = f"file://{tiny_model}"
    d["storage"]["uri"] = str(store / "store")
    spec = write(tmp_path, d)
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "promote", str(spec)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[checklist] storage:" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------ S3 (moto's real S3 API)
@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    from tests.servers import free_port, serve

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with serve(cmd, url + "/moto-api/", tmp_path_factory.mktemp("moto") / "moto.log", timeout_s=60):
        yield url


@pytest.fixture
def aws_env(monkeypatch):
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.mark.servers
def test_storage_s3_bucket_head(s3, aws_env):
    import boto3

    boto3.client("s3", endpoint_url=s3).create_bucket(Bucket="models")
    ok = status(kserve(None, storage={"uri": "s3://models/m", "s3_endpoint_url": s3}), "storage")
    assert ok[0] == "pass" and "bucket reachable" in ok[1]
    missing = status(kserve(None, storage={"uri": "s3://no-such-bucket/m", "s3_endpoint_url": s3}), "storage")
    assert missing[0] == "fail" and "no such bucket" in missing[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = status(kserve(None, storage={"uri": "s3://models/m", "s3_endpoint_url": closed}), "storage")
    assert down[0] == "fail" and "unreachable" in down[1]


def test_a_split_canary_on_a_small_host_warns(store, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert status(local(store), "metrics")[0] == "pass"  # the example names sequential
    got, why, todo = status(local(store, canary={"analysis": "split"}), "metrics")
    assert got == "warn" and "2 CPUs" in why and "sequential" in todo
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert status(local(store, canary={"analysis": "split"}), "metrics")[0] == "pass"
