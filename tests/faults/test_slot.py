"""A promotion killed with kill -9 while it holds its target's slot: the target is free again
within seconds, and the killed run leaves no Prefect server behind. Both Prefect modes: the
test session's real `prefect server`, and the ephemeral mode (PREFECT_API_URL unset, a
temporary PREFECT_HOME) that `llmship promote` uses by default.

The promotion is a real `llmship promote`, held in its deploy stage by a stand-in for vLLM
that never becomes ready (LLMSHIP_VLLM_PYTHON), so it holds the slot as long as the test wants.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.faults.conftest import (
    REPO, alive, descendants, llmship_cmd, prefect_servers_of, subprocess_env, wait_until,
)
from tests.servers import free_port

pytestmark = [pytest.mark.faults, pytest.mark.servers]

WAITER = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
from tasks.concurrency import promotion_slot
with promotion_slot(sys.argv[1], on_busy="wait", wait_timeout_s=float(sys.argv[2])):
    print("ACQUIRED", time.time(), flush=True)
"""


class Lines:
    """A subprocess's stdout, read line by line in a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.q: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            self.q.put(line)

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout_s} s; got:\n" + "".join(self.seen[-40:]))


def _hanging_vllm(tmp: Path) -> tuple[Path, Path]:
    """An executable standing in for vLLM's python: says it started, then never serves."""
    flag = tmp / "vllm-started"
    exe = tmp / "hanging-vllm"
    exe.write_text(f"#!/bin/sh\ntouch {flag}\nexec sleep 600\n")
    exe.chmod(0o755)
    return exe, flag


def _spec(tmp: Path, tiny_model: Path, name: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "model": {"source": f"file://{tiny_model}"},
        "engine": {"args": {"max_model_len": 256, "max_num_seqs": 2}},
        "target": {"kind": "local", "port": free_port(), "startup_timeout_s": 600},
        "storage": {"uri": str(tmp / "store")},
    }))
    return path


def _kill_holder_and_measure(tmp: Path, tiny_model: Path, env: dict[str, str], kill_list: list[int]) -> dict:
    name = f"slot-{uuid.uuid4().hex[:8]}"
    exe, flag = _hanging_vllm(tmp)
    env = {**env, "LLMSHIP_VLLM_PYTHON": str(exe), "LLMSHIP_CACHE": str(tmp / "cache")}
    promote = subprocess.Popen(llmship_cmd("promote", str(_spec(tmp, tiny_model, name))), cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_list.append(promote.pid)
    promote_out = Lines(promote)
    wait_until(lambda: flag.exists() or promote.poll() is not None, 300, "the promotion reached deploy")
    if promote.poll() is not None:
        time.sleep(1)
        raise AssertionError("promote exited early:\n" + "".join(promote_out.seen + list(promote_out.q.queue))[-3000:])
    waiter = subprocess.Popen([sys.executable, "-c", WAITER, f"local:{name}", "120"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_list.append(waiter.pid)
    out = Lines(waiter)
    out.wait_for("waiting for it", 120)

    family = descendants(promote.pid)
    servers = prefect_servers_of(family)
    os.kill(promote.pid, signal.SIGKILL)
    killed_at = time.time()
    promote.wait(10)
    # what the killed run started: its Prefect server must go; the stand-in vLLM (its own session,
    # as a real server is, so it outlives the flow) is the next run's to remove and is killed here
    wait_until(lambda: not prefect_servers_of(servers), 20, "the killed run's Prefect server exited", every=0.05)
    server_gone_s = time.time() - killed_at
    acquired_at = float(out.wait_for("ACQUIRED", 150).split()[1])
    waiter.wait(60)
    left = [p for p in alive(family) if p not in prefect_servers_of(family)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    return {"freed_after_s": acquired_at - killed_at, "servers_before_kill": servers, "server_gone_s": server_gone_s,
            "log": "".join(out.seen), "waiter_rc": waiter.returncode}


def test_killed_holder_frees_the_target_quickly_with_a_prefect_server(tiny_model, tmp_path, kill_list, no_leftovers):
    got = _kill_holder_and_measure(tmp_path, tiny_model, subprocess_env(), kill_list)
    print(f"\n[server mode] slot free {got['freed_after_s']:.1f} s after kill -9 of the holder")
    assert got["waiter_rc"] == 0
    assert "held by a promotion that is gone" in got["log"]
    assert got["freed_after_s"] < 15, got


def test_killed_holder_frees_the_target_quickly_in_ephemeral_mode(tiny_model, tmp_path, kill_list, no_leftovers):
    got = _kill_holder_and_measure(tmp_path, tiny_model, subprocess_env(ephemeral_home=tmp_path / "prefect-home"), kill_list)
    print(f"\n[ephemeral mode] slot free {got['freed_after_s']:.1f} s after kill -9 of the holder; "
          f"its ephemeral server(s) {got['servers_before_kill']} gone {got['server_gone_s']:.1f} s after the kill")
    assert got["servers_before_kill"], "the killed run had started an ephemeral Prefect server"
    assert got["waiter_rc"] == 0
    assert "held by a promotion that is gone" in got["log"]
    assert got["freed_after_s"] < 15, got


HOLDER = """
import sys, time, pathlib
from tasks.concurrency import promotion_slot
with promotion_slot(sys.argv[1]):
    pathlib.Path(sys.argv[2]).touch()
    time.sleep(600)
"""


def test_a_lease_without_a_holder_record_runs_out_in_ephemeral_mode(tmp_path, kill_list, no_leftovers):
    """A run killed between taking the slot and recording itself leaves a bare lease: in
    ephemeral mode (no repossessor) the waiter revokes it once it expires (60 s)."""
    env = subprocess_env(ephemeral_home=tmp_path / "prefect-home")
    key = f"local:bare-{uuid.uuid4().hex[:8]}"
    flag = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, key, str(flag)], cwd=REPO, env=env)
    kill_list.append(holder.pid)
    wait_until(flag.exists, 120, "the holder took the slot")
    family = descendants(holder.pid)
    # as if it had died before recording itself: the record goes, the process is killed
    drop = ("from prefect.client.orchestration import get_client\nfrom tasks.concurrency import holder_variable\n"
            "import sys\nwith get_client(sync_client=True) as c: c.delete_variable_by_name(holder_variable(sys.argv[1]))\n")
    os.kill(holder.pid, signal.SIGKILL)
    killed_at = time.time()
    holder.wait(10)
    subprocess.run([sys.executable, "-c", drop, f"llmship-promote:{key}"], cwd=REPO, env=env, check=True, timeout=120)
    waiter = subprocess.Popen([sys.executable, "-c", WAITER, key, "150"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    kill_list.append(waiter.pid)
    out = Lines(waiter)
    acquired_at = float(out.wait_for("ACQUIRED", 180).split()[1])
    waiter.wait(60)
    freed = acquired_at - killed_at
    print(f"\n[ephemeral mode, no holder record] slot free {freed:.1f} s after kill -9 (lease 60 s)")
    assert "revoked expired lease" in "".join(out.seen)
    assert 55 <= freed < 90
    wait_until(lambda: not prefect_servers_of(family), 20, "the killed holder's Prefect server exited")


def test_the_holder_is_recorded_while_it_holds_and_not_after(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client

    from tasks.concurrency import limit_name, process_start, promotion_slot, read_holder

    key = f"local:rec-{uuid.uuid4().hex[:8]}"
    with promotion_slot(key):
        with get_client(sync_client=True) as c:
            rec = read_holder(c, limit_name(key))
        assert rec["pid"] == os.getpid() and rec["pid_start"] == process_start(os.getpid())
        assert rec["lease_id"] and rec["host"]
    with get_client(sync_client=True) as c:
        assert read_holder(c, limit_name(key)) is None


@pytest.fixture(scope="session")
def prefect_api() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        pytest.skip("no Prefect server")
    return url
