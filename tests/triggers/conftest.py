"""Real servers for the trigger tests, started once per session on loopback.

- Prefect: the session's `prefect server start` from tests/conftest.py (PREFECT_API_URL).
- MLflow: `mlflow server` on SQLite, with webhooks allowed to reach loopback.
- The receiver: `llmship webhook serve` as a subprocess, following a folder of specs.
- A runner: a stand-in for promote_model (tests/triggers/promote_stub.py) served with the
  triggers deployments/prefect.yaml gives the `promote` deployment, so an event becomes a run
  exactly as it would in production.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx
import pytest

from tests.servers import free_port, serve, stop, wait_http

REPO = Path(__file__).resolve().parents[2]
MLFLOW_SECRET = "test-mlflow-webhook-secret"
HF_SECRET = "test-hf-webhook-secret"
STUB_DEPLOYMENT = "test-promote/promote"
HOLD_S = 2.0  # how long the stand-in promotion holds its target


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="session")
def prefect_api() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        pytest.skip("no Prefect server: tests/conftest.py starts one unless running under xdist")
    return url


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """`mlflow server` on SQLite, one worker, webhooks allowed to reach loopback over http."""
    from cryptography.fernet import Fernet

    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = _env(
        MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
        MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
        # one fixed key: without it each worker makes its own and deliveries fail (InvalidToken)
        MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode(),
        MLFLOW_WEBHOOK_CACHE_TTL="1",
        MLFLOW_WEBHOOK_REQUEST_MAX_RETRIES="1",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{home}/mlflow.db",
           "--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with serve(cmd, url + "/health", home / "server.log", env=env, cwd=home):
        yield url


@pytest.fixture
def tracking(mlflow_server, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def register_version(tracking_uri: str, name: str, tmp: Path, content: str = "v") -> str:
    """Log a tiny model folder to a run and register it as a new version (source runs:/...)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri)
    try:
        c.create_registered_model(name)
    except Exception as err:  # already there
        if "RESOURCE_ALREADY_EXISTS" not in str(getattr(err, "error_code", err)):
            raise
    exp = c.get_experiment_by_name("llmship-tests") or c.get_experiment(c.create_experiment("llmship-tests"))
    run = c.create_run(exp.experiment_id)
    folder = tmp / f"{name}-{uuid.uuid4().hex[:8]}" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": name, "content": content}))
    c.log_artifacts(run.info.run_id, str(folder), "model")
    c.set_terminated(run.info.run_id)
    mv = c.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return str(mv.version)


@dataclass
class Receiver:
    url: str
    proc: subprocess.Popen
    log: Path
    db: Path
    specs: Path

    def post_mlflow(self, body: bytes, *, secret: str = MLFLOW_SECRET, delivery_id: str | None = None,
                    timestamp: int | None = None, headers: dict | None = None) -> httpx.Response:
        from deployments.webhook import mlflow_signature

        did = delivery_id or str(uuid.uuid4())
        ts = str(int(time.time()) if timestamp is None else timestamp)
        h = {"Content-Type": "application/json", "X-MLflow-Delivery-Id": did, "X-MLflow-Timestamp": ts,
             "X-MLflow-Signature": mlflow_signature(secret, did, ts, body)}
        h.update(headers or {})
        return httpx.post(self.url + "/webhooks/mlflow", content=body, headers={k: v for k, v in h.items() if v is not None})

    def pending(self) -> int:
        return httpx.get(self.url + "/healthz").json()["pending_events"]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_receiver(workdir: Path, specs: Path, prefect_api: str, db: Path | None = None) -> Receiver:
    port = free_port()
    db = db or workdir / "deliveries.sqlite"
    log = workdir / f"receiver-{port}.log"
    code = "import typer; from flows.cli_triggers import register; app = typer.Typer(); register(app); app()"
    env = _env(LLMSHIP_MLFLOW_WEBHOOK_SECRET=MLFLOW_SECRET, LLMSHIP_HF_WEBHOOK_SECRET=HF_SECRET, PREFECT_API_URL=prefect_api)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "webhook", "serve", "--port", str(port), "--specs", str(specs), "--db", str(db)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=workdir,
        )
    r = Receiver(f"http://127.0.0.1:{port}", proc, log, db, specs)
    wait_http(r.url + "/healthz", 60, proc, log)
    return r


@pytest.fixture(scope="session")
def specs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("specs")


@pytest.fixture(scope="session")
def receiver(tmp_path_factory, specs_dir, prefect_api) -> Receiver:
    r = start_receiver(tmp_path_factory.mktemp("receiver"), specs_dir, prefect_api)
    yield r
    stop(r.proc)


@pytest.fixture(scope="session")
def records(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("records") / "runs.jsonl"


@pytest.fixture(scope="session")
def stub_runner(tmp_path_factory, prefect_api, mlflow_server, records) -> str:
    """Serve the stand-in promote flow with the product's `promote` triggers from prefect.yaml."""
    from prefect.client.orchestration import get_client

    work = tmp_path_factory.mktemp("runner")
    log = work / "runner.log"
    env = _env(PREFECT_API_URL=prefect_api, MLFLOW_TRACKING_URI=mlflow_server, LLMSHIP_TEST_RECORDS=str(records),
               LLMSHIP_TEST_HOLD_S=str(HOLD_S), PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_LOGGING_LEVEL="INFO")
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.triggers.promote_stub"], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=REPO)
    deadline = time.monotonic() + 90
    with get_client(sync_client=True) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("stub runner exited:\n" + log.read_text()[-3000:])
            try:
                dep = client.read_deployment_by_name(STUB_DEPLOYMENT)
                if client.read_resource_related_automations(f"prefect.deployment.{dep.id}"):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("stub runner did not register its deployment:\n" + log.read_text()[-3000:])
            time.sleep(0.5)
    yield STUB_DEPLOYMENT
    stop(proc)


def read_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_records(path: Path, pred: Callable[[dict], bool], n: int = 1, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = [r for r in read_records(path) if pred(r)]
        if len(got) >= n:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"wanted {n} run record(s), got {len(got)}: {read_records(path)[-5:]}")
        time.sleep(0.5)


def write_spec(folder: Path, name: str, source: str, store: Path | None = None) -> Path:
    import yaml

    doc = {"name": name, "model": {"source": source}, "target": {"kind": "local"}}
    if store:
        doc["storage"] = {"uri": str(store)}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    time.sleep(0.01)  # a new mtime for the receiver's spec index
    return path


def mlflow_body(kind: str, data: dict) -> bytes:
    entity, action = kind.rsplit(".", 1)
    return json.dumps({"entity": entity, "action": action, "timestamp": "2026-01-01T00:00:00+00:00", "data": data}).encode()


# The real control plane (tests/cluster), for what serves on the KServe target.
from tests.cluster.fixtures import kube_cluster, kube_namespace, pytest_runtest_makereport  # noqa: E402,F401
