"""TensorRT-LLM: path choice, honest flags (checked against 1.2's own option lists), and the
build's subprocess outcomes through stand-in tools that accept only those options."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tasks.errors import BadInput, StageFailed
from tasks.spec import PromotionSpec
from tasks.trtllm import (
    build_cmd,
    build_engine,
    build_for_spec,
    checkpoint_cmd,
    choose_path,
    explain_failure,
    quantizes_in_build,
    serve_cmd,
)
from tasks.trtllm.commands import flags
from tests.build.fakes.fake_tool import install

DATA = Path(__file__).parent / "data"


def option_list(name: str) -> set[str]:
    return {l.strip() for l in (DATA / name).read_text().splitlines() if l.strip() and not l.startswith("#")}


BUILD = option_list("trtllm-build-1.2.txt")
CONVERT = option_list("convert-checkpoint-llama-1.2.txt")
QUANTIZE = option_list("quantize-modelopt-1.2.txt")
SERVE = option_list("trtllm-serve-1.2.txt")


def trt_spec(method="none", tp=1, version="1.2.0", **args) -> PromotionSpec:
    return PromotionSpec.model_validate({
        "name": "trt", "model": {"source": "file:///m"},
        "quantization": {"method": method} if method != "none" else {},
        "engine": {"kind": "tensorrt-llm", "trtllm_version": version,
                   "args": {"tensor_parallel_size": tp, "max_model_len": 4096, "max_num_seqs": 32, **args}},
        "target": {"kind": "kserve", "gpu": {"count": max(tp, 1)}},
    })


def test_option_lists_name_their_source():
    for f in DATA.glob("*.txt"):
        head = f.read_text().splitlines()[:4]
        assert any("NVIDIA/TensorRT-LLM" in l for l in head), f
        assert any(re.search(r"@ [0-9a-f]{40}", l) for l in head), f
    assert {"--kv_cache_type", "--use_paged_context_fmha", "--gemm_plugin", "--workers"} <= BUILD


@pytest.mark.parametrize("version,prefer,want", [
    ("1.2.0", None, "engine"), ("0.21.0", None, "engine"), ("1.2.1", None, "engine"),
    ("1.3.0rc2", None, "pytorch"), ("2.0", None, "pytorch"), ("1.1.0", "pytorch", "pytorch"),
])
def test_path_by_version(version, prefer, want):
    assert choose_path(version, prefer) == want


def test_impossible_paths_are_bad_input():
    with pytest.raises(BadInput, match="no trtllm-build"):
        choose_path("1.3.0", "engine")
    with pytest.raises(BadInput, match="no PyTorch backend"):
        choose_path("0.21.0", "pytorch")
    with pytest.raises(BadInput, match="not a version"):
        choose_path("latest")


@pytest.mark.parametrize("method", ["none", "awq", "fp8"])
@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("arch", ["LlamaForCausalLM", "Qwen2ForCausalLM"])
def test_every_emitted_flag_exists_in_trtllm_1_2(method, tp, arch):
    spec = trt_spec(method, tp)
    ck = checkpoint_cmd("/m", "/ckpt", spec, arch, calib_dir="/calib")
    script = Path(ck[1]).name
    allowed = CONVERT if script == "convert_checkpoint.py" else QUANTIZE
    assert set(flags(ck)) <= allowed, set(flags(ck)) - allowed
    b = build_cmd("/ckpt", "/engine", spec)
    assert set(flags(b)) <= BUILD, set(flags(b)) - BUILD
    for path in ("engine", "pytorch"):
        s = serve_cmd("/model", spec, path, tokenizer="/tok", options_file="/o.yaml")
        assert set(flags(s)) <= SERVE, set(flags(s)) - SERVE


def test_build_flags_come_from_the_spec():
    spec = trt_spec("awq", tp=2, max_model_len=4096, max_num_seqs=32)
    b = build_cmd("/ckpt", "/engine", spec)
    opt = dict(zip(b[1::2], b[2::2]))
    assert opt["--max_batch_size"] == "32" and opt["--max_seq_len"] == "4096" and opt["--max_input_len"] == "4096"
    assert opt["--max_num_tokens"] == "8192" and opt["--kv_cache_type"] == "paged"
    assert opt["--use_paged_context_fmha"] == "enable" and opt["--gemm_plugin"] == "auto" and opt["--workers"] == "2"
    ck = checkpoint_cmd("/m", "/ckpt", spec, "LlamaForCausalLM", calib_dir="/calib")
    o = dict(zip(ck[2::2], ck[3::2]))
    assert Path(ck[1]).name == "quantize.py" and o["--qformat"] == "int4_awq" and o["--awq_block_size"] == "128"
    assert o["--tp_size"] == "2" and o["--calib_dataset"] == "/calib"
    plain = checkpoint_cmd("/m", "/ckpt", trt_spec(), "LlamaForCausalLM")
    assert plain[1].endswith("models/core/llama/convert_checkpoint.py")
    other = checkpoint_cmd("/m", "/ckpt", trt_spec(), "Qwen2ForCausalLM")
    assert "--qformat" in other and other[other.index("--qformat") + 1] == "full_prec"
    s = serve_cmd("/model", trt_spec(tp=2, version="1.3.0"), "pytorch")
    assert s[:3] == ["trtllm-serve", "serve", "/model"] and s[s.index("--backend") + 1] == "pytorch"
    assert s[s.index("--tp_size") + 1] == "2"


def test_int8_awq_is_refused():
    spec = PromotionSpec.model_validate({"name": "t", "model": {"source": "file:///m"},
                                         "quantization": {"method": "awq", "w_bit": 8},
                                         "engine": {"kind": "tensorrt-llm"}})
    with pytest.raises(BadInput, match="int4 only"):
        checkpoint_cmd("/m", "/c", spec, "LlamaForCausalLM", calib_dir="/x")


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    trtllm_build, examples = install(tmp_path / "bin", tmp_path / "examples")
    monkeypatch.setenv("LLMSHIP_TRTLLM_EXAMPLES", str(examples))
    return str(trtllm_build)


def test_engine_build_tp2_end_to_end_with_stand_in_tools(tiny_model, tmp_path, fake_tools):
    spec = trt_spec("none", tp=2)
    art = build_engine(str(tiny_model), spec, str(tmp_path / "work"), trtllm_build=fake_tools, python=sys.executable)
    assert art.path == "engine" and art.engine_files == ["rank0.engine", "rank1.engine"]
    engine = Path(art.serve_dir)
    cfg = json.loads((engine / "config.json").read_text())
    assert cfg["build_config"]["kv_cache_type"] == "paged" and cfg["build_config"]["max_batch_size"] == "32"
    assert (engine / "tokenizer" / "tokenizer.json").is_file()
    assert [Path(p).name for p in art.logs] == ["checkpoint.log", "build.log"]
    assert "fake trtllm-build" in Path(art.logs[1]).read_text()
    cmd = json.loads((engine / "trtllm-serve-command.json").read_text())
    assert cmd == art.serve_command and cmd[cmd.index("--backend") + 1] == "tensorrt"
    assert cmd[cmd.index("--tokenizer") + 1] == "{model}/tokenizer"
    opts = yaml.safe_load((engine / "trtllm-serve-options.yaml").read_text())
    assert opts["kv_cache_config"]["free_gpu_memory_fraction"] == 0.9


def test_engine_build_with_modelopt_awq_writes_a_local_calibration_set(tiny_model, tmp_path, fake_tools):
    art = build_engine(str(tiny_model), trt_spec("awq"), str(tmp_path / "w"), trtllm_build=fake_tools,
                       python=sys.executable)
    assert art.quant_format == "int4_awq"
    log = Path(art.logs[0]).read_text()
    assert '"--qformat": "int4_awq"' in log
    rows = (tmp_path / "w" / "calib" / "train.jsonl").read_text().splitlines()
    assert rows and all("text" in json.loads(r) for r in rows)


@pytest.mark.parametrize("mode,stage_obj,what", [
    ("oom", "trtllm-build", "ran out of memory"),
    ("crash", "trtllm-build", "AssertionError: Engine building failed"),
    ("missing-rank", None, "engine folder is incomplete"),
    ("checkpoint-no-config", None, "wrote no config.json"),
])
def test_build_failures_are_explained(tiny_model, tmp_path, fake_tools, monkeypatch, mode, stage_obj, what):
    monkeypatch.setenv("FAKE_TRTLLM_FAIL", mode)
    with pytest.raises(StageFailed) as err:
        build_engine(str(tiny_model), trt_spec(tp=2), str(tmp_path / "w"), trtllm_build=fake_tools,
                     python=sys.executable)
    assert err.value.stage == "build" and what in err.value.message + err.value.detail
    if stage_obj:
        assert err.value.obj == stage_obj
    if mode == "oom":
        assert "max_num_seqs" in err.value.hint and "build.log" in err.value.detail
    if mode == "missing-rank":
        assert "rank1.engine is missing" in err.value.detail


def test_missing_trtllm_build_is_bad_input(tiny_model, tmp_path, fake_tools):
    with pytest.raises(BadInput, match="command not found") as err:
        build_engine(str(tiny_model), trt_spec(), str(tmp_path / "w"), trtllm_build=str(tmp_path / "nope"),
                     python=sys.executable)
    assert "builder image" in err.value.hint


def test_a_flag_the_tool_does_not_know_is_reported(tmp_path, fake_tools):
    from tasks.trtllm.build import run_step

    with pytest.raises(StageFailed) as err:
        run_step("trtllm-build", [fake_tools, "--max_output_len", "5"], tmp_path / "x.log")
    assert "rejected a flag" in err.value.message


def test_pytorch_path_serves_the_modelopt_checkpoint(tiny_model, tmp_path):
    spec = trt_spec("awq", version="1.3.0")
    q = tmp_path / "modelopt"
    q.mkdir()
    (q / "config.json").write_text("{}")
    with pytest.raises(BadInput, match="hf_quant_config.json"):
        build_engine(str(tiny_model), spec, str(tmp_path / "w"), quantized_dir=str(q))
    (q / "hf_quant_config.json").write_text(json.dumps({"quantization": {"quant_algo": "W4A16_AWQ"}}))
    art = build_engine(str(tiny_model), spec, str(tmp_path / "w"), quantized_dir=str(q))
    assert art.path == "pytorch" and art.serve_dir == str(tmp_path / "w" / "hf") and art.engine_files == []
    assert art.serve_command[art.serve_command.index("--backend") + 1] == "pytorch"
    served = Path(art.serve_dir)
    assert (served / "trtllm-serve-options.yaml").is_file() and (served / "hf_quant_config.json").is_file()
    assert not (q / "trtllm-serve-options.yaml").exists(), "the quantize output is left as it was"
    assert build_for_spec(str(q), spec, str(tmp_path / "w2")) == tmp_path / "w2" / "hf"


def test_engine_path_quantizes_in_its_own_checkpoint_step(tmp_path):
    assert quantizes_in_build(trt_spec("awq", version="1.2.0"))
    assert not quantizes_in_build(trt_spec("awq", version="1.3.0"))
    assert not quantizes_in_build(trt_spec("none", version="1.2.0"))
    q = tmp_path / "modelopt"
    q.mkdir()
    (q / "hf_quant_config.json").write_text("{}")
    with pytest.raises(BadInput, match="skip the quantize stage|original model"):
        build_for_spec(str(q), trt_spec("awq", version="1.2.0"), str(tmp_path / "w"))


def test_vllm_specs_do_not_build():
    spec = PromotionSpec.model_validate({"name": "v", "model": {"source": "file:///m"}})
    with pytest.raises(BadInput, match="not tensorrt-llm"):
        build_engine("/m", spec, "/tmp/x")


def test_explain_failure_falls_back_to_the_first_error_line():
    msg, hint = explain_failure("info\nsomething\nRuntimeError: bad thing happened\nmore")
    assert "RuntimeError: bad thing happened" in msg
