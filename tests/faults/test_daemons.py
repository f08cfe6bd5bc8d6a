"""Long-running commands stop what they started: `llmship webhook serve` in Prefect's ephemeral
mode starts a temporary Prefect server when it first sends events; SIGTERM or SIGINT must stop
the receiver and that server, and even kill -9 must not leave the server running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import httpx
import pytest

from tests.faults.conftest import REPO, alive, descendants, llmship_cmd, prefect_servers_of, subprocess_env, wait_until
from tests.servers import free_port

pytestmark = pytest.mark.faults
SECRET = "faults-webhook-secret"


def _start_receiver(tmp_path, kill_list):
    specs = tmp_path / "specs"
    specs.mkdir()
    port = free_port()
    env = subprocess_env(ephemeral_home=tmp_path / "prefect-home", LLMSHIP_MLFLOW_WEBHOOK_SECRET=SECRET)
    log = (tmp_path / "receiver.log").open("wb")
    proc = subprocess.Popen(llmship_cmd("webhook", "serve", "--port", str(port), "--specs", str(specs),
                                        "--db", str(tmp_path / "deliveries.sqlite")),
                            cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
    kill_list.append(proc.pid)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(url) or proc.poll() is not None, 120, "the receiver answers /healthz")
    assert proc.poll() is None, (tmp_path / "receiver.log").read_text()[-3000:]
    return proc, url


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _pending(url: str) -> int | None:
    try:
        return httpx.get(url + "/healthz", timeout=5).json()["pending_events"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def _deliver_and_wait_for_prefect(url: str, proc) -> list[int]:
    """One signed MLflow delivery; the receiver starts its ephemeral Prefect server to emit it."""
    from deployments.webhook import mlflow_signature

    body = json.dumps({"entity": "model_version", "action": "created", "timestamp": "2026-01-01T00:00:00+00:00",
                       "data": {"name": "m", "version": "1"}}).encode()
    did, ts = str(uuid.uuid4()), str(int(time.time()))
    r = httpx.post(url + "/webhooks/mlflow", content=body, headers={
        "Content-Type": "application/json", "X-MLflow-Delivery-Id": did, "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": mlflow_signature(SECRET, did, ts, body)})
    assert r.status_code == 202, r.text
    t0 = time.monotonic()
    assert _healthy(url), "the receiver answers while its Prefect server starts"
    assert time.monotonic() - t0 < 2
    wait_until(lambda: _pending(url) == 0, 240,
               "the delivery's events reached the (ephemeral) Prefect server", every=0.5)
    servers = prefect_servers_of(descendants(proc.pid))
    assert servers, "the receiver runs an ephemeral Prefect server"
    return servers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_webhook_serve_stops_its_prefect_server_on_a_signal(tmp_path, kill_list, no_leftovers, sig):
    proc, url = _start_receiver(tmp_path, kill_list)
    servers = _deliver_and_wait_for_prefect(url, proc)
    family = descendants(proc.pid)
    t0 = time.monotonic()
    proc.send_signal(sig)
    rc = proc.wait(60)
    wait_until(lambda: not alive(family), 30, f"everything the receiver started exited ({alive(family)} left)")
    print(f"\n[webhook serve, {sig.name}] exited {rc} after {time.monotonic() - t0:.1f} s; "
          f"Prefect server {servers} and {len(family)} process(es) in all stopped")
    assert rc == 0, (tmp_path / "receiver.log").read_text()[-3000:]
    assert "Traceback" not in (tmp_path / "receiver.log").read_text()


def test_webhook_serve_killed_leaves_no_prefect_server(tmp_path, kill_list, no_leftovers):
    proc, url = _start_receiver(tmp_path, kill_list)
    servers = _deliver_and_wait_for_prefect(url, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    t0 = time.monotonic()
    wait_until(lambda: not prefect_servers_of(servers), 30, "the killed receiver's Prefect server exited")
    print(f"\n[webhook serve, SIGKILL] its Prefect server {servers} exited {time.monotonic() - t0:.1f} s later")
