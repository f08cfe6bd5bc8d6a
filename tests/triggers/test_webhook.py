"""The receiver on real servers: MLflow -> receiver -> Prefect event -> automation -> flow run."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.servers import stop
from tests.triggers.conftest import (
    HF_SECRET, MLFLOW_SECRET, mlflow_body, read_records, register_version, start_receiver, wait_records, write_spec,
)

pytestmark = pytest.mark.servers


def _events(prefect_api: str, resource_id: str, name: str | None = None) -> list[dict]:
    """Events the Prefect server stored for a resource (its events API, as the UI reads it)."""
    filt = {"resource": {"id": [resource_id]}, "occurred": {"since": "2020-01-01T00:00:00Z"}}
    if name:
        filt["event"] = {"name": [name]}
    r = httpx.post(f"{prefect_api}/events/filter", json={"filter": filt, "limit": 50})
    r.raise_for_status()
    return r.json()["events"]


def _wait_events(prefect_api: str, resource_id: str, name: str, n: int = 1, timeout_s: float = 30) -> list[dict]:
    """The event persister writes in batches: poll until n events are stored (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = _events(prefect_api, resource_id, name)
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


def _rows(receiver) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{receiver.db}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]


def _flow_run(prefect_api: str, run_id: str) -> dict:
    return httpx.get(f"{prefect_api}/flow_runs/{run_id}").json()


def test_mlflow_alias_move_starts_a_promote_run(tracking, receiver, stub_runner, records, prefect_api, tmp_path):
    """A real MLflow server delivers a signed webhook; the run gets the spec pinned to that version."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking)
    hook = c.create_webhook(name=f"llmship-{uuid.uuid4().hex[:6]}", url=receiver.url + "/webhooks/mlflow",
                            events=["model_version.created", "model_version_alias.created"], secret=MLFLOW_SECRET)
    time.sleep(1.5)  # MLflow caches webhooks per event (MLFLOW_WEBHOOK_CACHE_TTL=1 s here): let it see this one
    try:
        write_spec(receiver.specs, "viamlflow", "models:/viamlflow@champion")
        version = register_version(tracking, "viamlflow", tmp_path)
        c.set_registered_model_alias("viamlflow", "champion", version)

        (rec,) = wait_records(records, lambda r: r["name"] == "viamlflow")
        assert rec["source"] == f"models:/viamlflow/{version}"  # pinned to the version the alias moved to
        assert rec["registry_version"] == version
        assert rec["source_uri"].startswith("file://")  # runs:/ source downloaded through the registry
        run = _flow_run(prefect_api, rec["flow_run_id"])
        assert run["parameters"]["spec"]["model"]["source"] == f"models:/viamlflow/{version}"
        assert run["parameters"]["spec"]["name"] == "viamlflow"
        # the release record's trigger: the webhook delivery that started it
        trig = rec["trigger"]
        assert trig["kind"] == "webhook" and trig["registry"] == "mlflow" and trig["revision"] == str(version)
        assert trig["delivery"] and trig["registry_event"].startswith("model_version_alias")
        assert "model_version_alias.created: models:/viamlflow@champion -> version" in receiver.log_text()
        # MLflow delivers each event on its own thread: the version.created one may come later
        deadline = time.monotonic() + 20
        while f"model_version.created: models:/viamlflow/{version} (no spec follows it)" not in receiver.log_text():
            assert time.monotonic() < deadline, receiver.log_text()[-2000:]
            time.sleep(0.5)
        assert MLFLOW_SECRET not in receiver.log_text()
    finally:
        c.delete_webhook(hook.webhook_id)  # later tests send their own deliveries


def test_bad_deliveries_change_nothing(tracking, receiver, stub_runner, records, prefect_api, tmp_path):
    write_spec(receiver.specs, "guarded", "models:/guarded@champion")
    version = register_version(tracking, "guarded", tmp_path)
    good = mlflow_body("model_version_alias.created", {"name": "guarded", "alias": "champion", "version": version})
    rows_before = _rows(receiver)

    forged = receiver.post_mlflow(good, secret="not-the-secret")
    missing = receiver.post_mlflow(good, headers={"X-MLflow-Signature": None})
    stale = receiver.post_mlflow(good, timestamp=int(time.time()) - 301)
    future = receiver.post_mlflow(good, timestamp=int(time.time()) + 301)
    oversized = receiver.post_mlflow(good[:-1] + b', "pad": "' + b"x" * (1024 * 1024) + b'"}')
    bad_json = receiver.post_mlflow(b'{"entity": "model_version_alias", "action": ')
    no_data = receiver.post_mlflow(b'{"entity": "model_version_alias", "action": "created"}')
    tampered_id = receiver.post_mlflow(good, headers={"X-MLflow-Delivery-Id": "some-other-id"})
    assert [r.status_code for r in (forged, missing, stale, future, oversized, bad_json, no_data, tampered_id)] == \
        [401, 401, 401, 401, 413, 400, 400, 401]
    assert stale.json()["outcome"] == "stale"
    assert _rows(receiver) == rows_before  # nothing recorded, so nothing to emit
    assert _events(prefect_api, "llmship.model.guarded", "llmship.promotion.requested") == []

    # a valid delivery, then the same one replayed: one run only
    did = str(uuid.uuid4())
    t0 = time.monotonic()
    first = receiver.post_mlflow(good, delivery_id=did)
    answered = time.monotonic() - t0
    replay = receiver.post_mlflow(good, delivery_id=did)
    assert (first.status_code, first.json()["outcome"], first.json()["promotions"]) == (202, "accepted", 1)
    assert (replay.status_code, replay.json()["outcome"]) == (200, "duplicate")
    print(f"202 answered in {answered * 1000:.1f} ms")
    wait_records(records, lambda r: r["name"] == "guarded")
    time.sleep(3)  # room for a second run, were there one
    assert len([r for r in read_records(records) if r["name"] == "guarded"]) == 1
    promo = _wait_events(prefect_api, "llmship.model.guarded", "llmship.promotion.requested")
    assert len(promo) == 1 and promo[0]["payload"]["spec"]["model"]["source"] == f"models:/guarded/{version}"


def test_unknown_event_is_ignored_with_a_log_line(receiver, prefect_api):
    body = mlflow_body("registered_model.created", {"name": "ignored-model", "tags": {}, "description": None})
    r = receiver.post_mlflow(body)
    assert (r.status_code, r.json()["outcome"]) == (202, "ignored")
    assert "ignored: unknown event 'registered_model.created'" in receiver.log_text()
    assert _events(prefect_api, "llmship.model.ignored-model") == []


def test_dedup_and_outbox_survive_a_restart(tmp_path, specs_dir, prefect_api):
    """Accepted while Prefect is unreachable: 202, kept pending; sent after a restart; a replay is 200."""
    from tests.servers import free_port

    write_spec(specs_dir, "outboxed", "models:/outboxed@champion")
    down = f"http://127.0.0.1:{free_port()}/api"  # nothing listens here
    r1 = start_receiver(tmp_path, specs_dir, down)
    body = mlflow_body("model_version_alias.created", {"name": "outboxed", "alias": "champion", "version": "1"})
    did = str(uuid.uuid4())
    try:
        assert r1.post_mlflow(body, delivery_id=did).status_code == 202
        time.sleep(1.0)
        assert r1.pending() == 1
    finally:
        stop(r1.proc)
    r2 = start_receiver(tmp_path, specs_dir, prefect_api, db=r1.db)
    try:
        deadline = time.monotonic() + 30
        while r2.pending() and time.monotonic() < deadline:
            time.sleep(0.3)
        assert r2.pending() == 0
        assert r2.post_mlflow(body, delivery_id=did).status_code == 200  # the replay, after the restart
        assert len(_wait_events(prefect_api, "llmship.model.outboxed", "llmship.promotion.requested")) == 1
    finally:
        stop(r2.proc)


def test_huggingface_branch_push(receiver, stub_runner, records, prefect_api):
    write_spec(receiver.specs, "hfmodel", "hf://acme/hfmodel@main")
    sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
    payload = {
        "event": {"action": "update", "scope": "repo.content"},
        "repo": {"type": "model", "name": "acme/hfmodel", "id": "6500", "private": False, "headSha": sha,
                 "owner": {"id": "61"}, "url": {"web": "https://huggingface.co/acme/hfmodel", "api": "https://huggingface.co/api/models/acme/hfmodel"}},
        "webhook": {"id": "w1", "version": 3},
        "updatedRefs": [{"ref": "refs/heads/main", "oldSha": "0" * 40, "newSha": sha}],
    }
    body = json.dumps(payload).encode()
    url = receiver.url + "/webhooks/huggingface"
    assert httpx.post(url, content=body, headers={"X-Webhook-Secret": "wrong"}).status_code == 401
    assert httpx.post(url, content=body).status_code == 401
    assert httpx.post(url, content=b"{not json", headers={"X-Webhook-Secret": HF_SECRET}).status_code == 400
    ok = httpx.post(url, content=body, headers={"X-Webhook-Secret": HF_SECRET})
    assert (ok.status_code, ok.json()["promotions"]) == (202, 1)
    assert httpx.post(url, content=body, headers={"X-Webhook-Secret": HF_SECRET}).status_code == 200
    (rec,) = wait_records(records, lambda r: r["name"] == "hfmodel")
    assert rec["source"] == f"hf://acme/hfmodel@{sha}"
    discussion = {**payload, "event": {"action": "create", "scope": "discussion"}}
    r = httpx.post(url, content=json.dumps(discussion).encode(), headers={"X-Webhook-Secret": HF_SECRET})
    assert (r.status_code, r.json()["outcome"]) == (202, "ignored")


def test_secret_from_a_prefect_secret_block(prefect_api, monkeypatch):
    from prefect.blocks.system import Secret

    from deployments.webhook import WebhookConfig

    name = f"mlflow-hook-{uuid.uuid4().hex[:6]}"
    Secret(value="from-the-block").save(name)
    for var in ("LLMSHIP_MLFLOW_WEBHOOK_SECRET", "LLMSHIP_HF_WEBHOOK_SECRET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LLMSHIP_MLFLOW_WEBHOOK_SECRET_BLOCK", name)
    cfg = WebhookConfig.from_env()
    assert cfg.mlflow_secret.get_secret_value() == "from-the-block"
    assert cfg.secret_sources["mlflow"] == f"Prefect Secret block {name!r}"
