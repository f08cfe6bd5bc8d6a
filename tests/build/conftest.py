"""Fixtures for the build-chain tests: a briefly trained tiny model and moto's real S3 server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import free_port, serve

QUANT_PY = os.environ.get("LLMSHIP_QUANT_PYTHON") or str(Path(__file__).resolve().parents[2] / ".venv-quant/bin/python")


def quant_env_ready() -> bool:
    if not Path(QUANT_PY).exists():
        return False
    probe = subprocess.run([QUANT_PY, "-c", "import llmcompressor, awq"], capture_output=True)
    return probe.returncode == 0


def train_briefly(model_dir: Path, steps: int = 120, seed: int = 0) -> None:
    """Fit the random tiny model to the built-in text for a few steps, so that its perplexity
    is far from uniform and quantization error shows in it (a random model's does not)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.quantize.stage import builtin_text

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = tok.encode(builtin_text("calibration.txt"))
    seq = 64
    blocks = torch.tensor([ids[i : i + seq] for i in range(0, len(ids) - seq, seq // 2)])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(0, len(blocks), (8,))]
        loss = model(batch, labels=batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)


@pytest.fixture(scope="session")
def trained_tiny(tiny_model, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("trained") / "tiny-llama-trained"
    shutil.copytree(tiny_model, dest)
    train_briefly(dest)
    return dest


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> str:
    """moto's S3 server (real HTTP S3 API) on a free loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with serve(cmd, url + "/moto-api/", tmp_path_factory.mktemp("moto") / "moto.log", timeout_s=60):
        yield url


@pytest.fixture
def aws_env(monkeypatch):
    """Dummy credentials for moto; never real ones."""
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def pytest_configure(config):
    config.addinivalue_line("markers", "quant: runs a real quantization backend in the quantization venv (tens of seconds)")
