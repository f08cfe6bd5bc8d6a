"""`llmship plan` and `llmship build-engine --print` through the real app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def write_spec(tmp_path, model, gib=80.0, kind="tensorrt-llm"):
    p = tmp_path / "spec.yaml"
    p.write_text(f"""name: tiny
model: {{source: "file://{model}"}}
engine: {{kind: {kind}, args: {{dtype: bfloat16, max_model_len: 512, max_num_seqs: 4}}}}
target: {{kind: kserve, gpu: {{memory_gib: {gib}}}}}
""")
    return p


def test_plan_prints_the_table_and_fits(tiny_model, tmp_path):
    r = runner.invoke(app, ["plan", str(write_spec(tmp_path, tiny_model))])
    assert r.exit_code == 0, r.output
    assert "verdict" in r.output and "fits" in r.output and "1,024 B (bfloat16)" in r.output


def test_plan_that_does_not_fit_exits_2(tiny_model, tmp_path):
    r = runner.invoke(app, ["plan", str(write_spec(tmp_path, tiny_model, gib=0.5)), "--json"])
    assert r.exit_code == 2
    assert json.loads(r.stdout[: r.stdout.rindex("}") + 1])["verdict"] == "does-not-fit"
    assert "[preflight] tiny: does not fit" in r.output


def test_build_engine_print(tiny_model, tmp_path):
    r = runner.invoke(app, ["build-engine", str(write_spec(tmp_path, tiny_model)), str(tmp_path / "w"), "--print"])
    assert r.exit_code == 0, r.output
    cmds = json.loads(r.stdout)
    assert cmds["path"] == "engine" and cmds["build"][0] == "trtllm-build" and cmds["serve"][0] == "trtllm-serve"
