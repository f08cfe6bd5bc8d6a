"""`llmship loadtest` exit codes: 0 SLO held, 1 SLO missed or server unreachable, 2 bad input."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from bench.support.fake_openai import FakeConfig, fake_server_process


@pytest.fixture(scope="module")
def app():
    import typer

    from flows import cli_loadtest

    a = typer.Typer()
    cli_loadtest.register(a)

    @a.command("noop")
    def _noop() -> None:  # a second command keeps typer from collapsing the group
        pass

    return a


@pytest.fixture(scope="module")
def server():
    with fake_server_process(FakeConfig(ttft_s=0.02, itl_s=0.002)) as url:
        yield url


def run(app, *args):
    return CliRunner().invoke(app, ["loadtest", *args])


def test_passing_run_writes_reports_and_exits_0(app, server, tmp_path):
    r = run(app, server, "-n", "30", "--concurrency", "3", "--output-tokens", "4", "--ttft-p99-ms", "500",
            "--out", str(tmp_path), "--records", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "SLO passed" in r.output
    d = json.loads((tmp_path / "loadtest.json").read_text())
    assert d["model_id"] == "fake-model"  # found through /v1/models
    assert d["completed"] == 30 and d["passed"] is True
    assert (tmp_path / "loadtest.png").is_file() and (tmp_path / "loadtest.csv").is_file()


def test_missed_slo_exits_1_with_the_reason(app, server):
    r = run(app, server, "--model", "fake-model", "-n", "20", "--ttft-p99-ms", "1", "--no-progress")
    assert r.exit_code == 1
    assert "SLO violated" in r.output and "p99 TTFT" in r.output and "> limit 1 ms" in r.output


def test_unreachable_server_exits_1(app):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    r = run(app, f"http://127.0.0.1:{port}", "--model", "m", "-n", "5", "--no-progress")
    assert r.exit_code == 1
    assert "[load_test]" in r.output and "what to do" in r.output


@pytest.mark.parametrize(
    "args",
    [
        ["--concurrency", "0"],
        ["--mode", "rate"],  # no rate given
        ["--mode", "bogus"],
        ["--header", "no-colon"],
    ],
)
def test_bad_input_exits_2(app, server, args):
    r = run(app, server, "--model", "fake-model", "-n", "5", "--no-progress", *args)
    assert r.exit_code == 2, r.output
    assert "[load_test]" in r.output


def test_bad_url_exits_2(app):
    r = run(app, "localhost:8000", "--model", "m", "-n", "5")
    assert r.exit_code == 2 and "not an http(s) URL" in r.output


def test_profile_file(app, server, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("load:\n  concurrency: 2\n  num_requests: 8\n  output_tokens: 3\nslo:\n  max_error_rate: 0\n")
    r = run(app, server, "--model", "fake-model", "--profile", str(f), "--no-progress")
    assert r.exit_code == 0, r.output
    assert "8 completed" in r.output
