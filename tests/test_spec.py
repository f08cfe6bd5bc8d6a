"""The promotion spec: a good one, each kind of bad one, and the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks.errors import BadInput
from tasks.spec import PromotionSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"name": "tiny", "model": {"source": "hf://org/model@0123abc"}}


def errors_of(data: dict) -> list[str]:
    with pytest.raises(BadInput) as info:
        parse_spec(data)
    assert info.value.exit_code == 2
    return info.value.detail.splitlines()


def test_examples_are_valid():
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        spec = load_spec(path)
        assert spec.name


def test_defaults_fill_a_minimal_spec():
    spec = parse_spec(GOOD)
    assert spec.engine.kind == "vllm" and spec.target.kind == "local"
    assert spec.canary.steps[-1] == 100
    assert spec.served_name == "tiny"
    assert spec.quant_backend is None


def test_digest_is_stable_and_content_sensitive():
    a, b = parse_spec(GOOD), parse_spec(json.loads(json.dumps(GOOD)))
    assert a.digest() == b.digest()
    c = parse_spec({**GOOD, "slo": {"ttft_p99_ms": 100}})
    assert c.digest() != a.digest()


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"bogus": 1}, "bogus: unknown field"),
        ({"engine": {"args": {"max_num_seqs": 0}}}, "engine.args.max_num_seqs: Input should be greater than or equal to 1"),
        ({"engine": {"args": {"typo_field": 1}}}, "engine.args.typo_field: unknown field"),
        ({"model": {"source": "ftp://x/y"}}, "model.source: unknown source"),
        ({"model": {"source": "hf://org/model"}}, "model: hf:// source is not pinned"),
        ({"model": {"source": "file://relative/path"}}, "model.source: file:// sources need an absolute path"),
        ({"name": "Bad_Name"}, "name: use lowercase letters"),
        ({"canary": {"steps": [50, 20, 100]}}, "canary.steps: steps must rise strictly"),
        ({"canary": {"steps": [10, 50]}}, "canary.steps: the last step must be 100"),
        ({"target": {"kind": "kserve", "namespace": "x", "bogus": 1}}, "target.bogus: unknown field"),
        ({"target": {"kind": "mars"}}, "target: Input tag 'mars'"),
        ({"storage": {"uri": "gs://bucket/x"}}, "storage.uri: unknown storage"),
        ({"quantization": {"method": "fp8", "backend": "autoawq"}}, "quantization: autoawq only does AWQ int4"),
        ({"engine": {"kind": "tensorrt-llm"}, "quantization": {"method": "awq", "backend": "autoawq"}},
         "(spec): quantization.backend: tensorrt-llm takes ModelOpt"),
        ({"load": {"mode": "rate", "num_requests": 5}}, "load: mode 'rate' needs a rate"),
        ({"load": {"concurrency": 2}}, "load: bound the run"),
        ({"slo": {"max_error_rate": 2}}, "slo.max_error_rate: Input should be less than or equal to 1"),
    ],
)
def test_each_bad_field_is_named(patch, expected):
    lines = errors_of({**GOOD, **patch})
    assert any(line.startswith(expected) for line in lines), lines


def test_every_error_is_reported_at_once():
    lines = errors_of({**GOOD, "bogus": 1, "name": "X", "engine": {"args": {"max_num_seqs": 0}}})
    assert len(lines) == 3


def test_not_a_mapping():
    with pytest.raises(BadInput, match="YAML mapping"):
        parse_spec(["a"])


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_validate_and_schema(tmp_path):
    ok = run_cli("validate", str(ROOT / "examples" / "tiny-local.yaml"))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "bogus": 1, "engine": {"args": {"dtype": "int3"}}}))
    res = run_cli("validate", str(bad))
    assert res.returncode == 2
    assert "bogus: unknown field" in res.stderr
    assert "engine.args.dtype: Input should be 'auto', 'float16', 'bfloat16' or 'float32'" in res.stderr
    assert "Traceback" not in res.stderr
    missing = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "spec file not found" in missing.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    res = run_cli("validate", str(broken))
    assert res.returncode == 2 and "not valid YAML" in res.stderr
    schema = run_cli("schema")
    assert schema.returncode == 0
    props = json.loads(schema.stdout)["properties"]
    assert {"name", "model", "quantization", "engine", "target", "storage", "warmup", "load", "slo", "canary"} <= set(props)
    assert json.loads(schema.stdout) == PromotionSpec.model_json_schema()
