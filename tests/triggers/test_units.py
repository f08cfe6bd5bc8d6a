"""Fast checks of the pieces with no server: signatures, references, spec routing, prefect.yaml."""

from __future__ import annotations

import pytest
import yaml

from deployments.routing import PROMOTION_EVENT, SpecIndex, promotion_events
from deployments.webhook import mlflow_signature, mlflow_signature_ok
from tasks.concurrency import limit_name, target_key
from tasks.errors import BadInput
from tasks.registry import parse_models_uri
from tasks.registry.champion import Serving, Wanted, _serves
from tasks.spec import parse_spec
from tests.triggers.conftest import write_spec


def test_signature_matches_mlflows_own_signer():
    from mlflow.webhooks.delivery import _generate_hmac_signature

    body = '{"entity": "model_version_alias", "action": "created", "data": {"name": "t\\u00e9"}}'
    ours = mlflow_signature("s3cret", "d-1", "1700000000", body.encode())
    assert ours == _generate_hmac_signature("s3cret", "d-1", "1700000000", body)
    assert mlflow_signature_ok("s3cret", "d-1", "1700000000", body.encode(), ours)
    assert mlflow_signature_ok("s3cret", "d-1", "1700000000", body.encode(), "v1,AAAA " + ours)  # several signatures
    assert not mlflow_signature_ok("other", "d-1", "1700000000", body.encode(), ours)
    assert not mlflow_signature_ok("s3cret", "d-2", "1700000000", body.encode(), ours)  # id is signed
    assert not mlflow_signature_ok("s3cret", "d-1", "1700000001", body.encode(), ours)  # timestamp is signed
    assert not mlflow_signature_ok("s3cret", "d-1", "1700000000", body.encode() + b" ", ours)  # exact raw body


@pytest.mark.parametrize("uri,name,alias,version", [
    ("models:/tiny@champion", "tiny", "champion", None),
    ("models:/tiny/3", "tiny", None, "3"),
    ("models:/tiny/latest", "tiny", None, "latest"),
])
def test_models_uri(uri, name, alias, version):
    ref = parse_models_uri(uri)
    assert (ref.name, ref.alias, ref.version) == (name, alias, version)
    assert ref.uri == uri


@pytest.mark.parametrize("uri", ["models:/", "models:/a/b/c", "models:/tiny/three", "runs:/abc/model", "models:/a@"])
def test_bad_models_uri_is_bad_input(uri):
    with pytest.raises(BadInput) as err:
        parse_models_uri(uri)
    assert err.value.exit_code == 2 and "models:/<name>" in err.value.render()


def test_spec_index_routes_events_to_the_specs_that_follow_them(tmp_path):
    write_spec(tmp_path, "a", "models:/tiny@champion")
    write_spec(tmp_path, "b", "models:/tiny/latest")
    write_spec(tmp_path, "c", "models:/other@champion")
    write_spec(tmp_path, "d", "hf://acme/tiny@main")
    (tmp_path / "broken.yaml").write_text("name: [")
    idx = SpecIndex(tmp_path)
    assert [f.spec.name for f in idx.mlflow("tiny", alias="champion")] == ["a"]
    assert [f.spec.name for f in idx.mlflow("tiny", alias="staging")] == []
    assert [f.spec.name for f in idx.mlflow("tiny", new_version=True)] == ["b"]
    assert [f.spec.name for f in idx.hf("acme/tiny", "main")] == ["d"]
    assert idx.hf("acme/tiny", "dev") == []
    ev = promotion_events(idx.mlflow("tiny", alias="champion"), registry="mlflow", model="tiny", revision="7",
                          pinned_source="models:/tiny/7", registry_event="model_version_alias.created", delivery_key="k")
    assert ev[0]["event"] == PROMOTION_EVENT
    assert ev[0]["resource"]["prefect.resource.id"] == "llmship.model.tiny"
    assert ev[0]["payload"]["spec"]["model"]["source"] == "models:/tiny/7"
    parse_spec(ev[0]["payload"]["spec"])  # the pinned spec is still a valid spec
    # the same delivery always gives the same event id: a re-send after a crash is not a new event
    again = promotion_events(idx.mlflow("tiny", alias="champion"), registry="mlflow", model="tiny", revision="7",
                             pinned_source="models:/tiny/7", registry_event="x", delivery_key="k")
    assert again[0]["id"] == ev[0]["id"]


def test_target_keys_are_per_name_and_namespace():
    local = parse_spec({"name": "tiny", "model": {"source": "models:/tiny@champion"}})
    k1 = parse_spec({"name": "tiny", "model": {"source": "models:/tiny@champion"}, "target": {"kind": "kserve", "namespace": "a"}})
    k2 = parse_spec({"name": "tiny", "model": {"source": "models:/tiny@champion"}, "target": {"kind": "kserve", "namespace": "b"}})
    assert target_key(local) == "local:tiny"
    assert len({limit_name(local), limit_name(k1), limit_name(k2)}) == 3
    assert "/" not in limit_name(k1)  # Prefect limit names may not hold '/'


def test_what_serves_comparison():
    w = Wanted(registry="mlflow", tracks="models:/tiny@champion", revision="3", pinned_source="models:/tiny/3")
    assert _serves(w, Serving(where="x", registry_version="3", source="models:/tiny/3"))
    assert not _serves(w, Serving(where="x", registry_version="2", source="models:/tiny/2"))
    assert not _serves(w, Serving(where="x", registry_version="3", source="models:/other/3"))
    h = Wanted(registry="hf", tracks="hf://a/b@main", revision="f" * 40, pinned_source="hf://a/b@" + "f" * 40)
    assert _serves(h, Serving(where="x", source="hf://a/b@" + "f" * 40))
    assert not _serves(h, Serving(where="x", source="hf://a/b@" + "e" * 40))


def test_prefect_yaml_deployments_and_trigger():
    from deployments.deploy import deployment_triggers, load_project

    project = load_project()
    names = {d["name"]: d for d in project["deployments"]}
    assert names["promote"]["entrypoint"] == "flows/promote.py:promote_model"
    assert names["champion"]["entrypoint"] == "flows/scheduled_promotion.py:scheduled_promotion"
    assert names["build-engine"]["work_pool"]["name"] == "llmship-gpu"
    assert names["champion"]["schedules"][0]["cron"]
    (trigger,) = deployment_triggers("promote", project)
    assert trigger.expect == {PROMOTION_EVENT}
    assert trigger.parameters["spec"] == "{{ event.payload.spec }}"
    # the release record's trigger: which webhook delivery started the run
    assert trigger.parameters["trigger"]["kind"] == "webhook"
    assert trigger.parameters["trigger"]["delivery"] == "{{ event.payload.delivery }}"
    pools = {p["name"]: p["type"] for p in project["definitions"]["llmship_work_pools"]}
    assert pools == {"llmship-process": "process", "llmship-gpu": "kubernetes"}
    yaml.safe_dump(project)


def test_receiver_manifests_agree_with_the_code():
    from pathlib import Path

    from deployments import webhook
    from tests.triggers.conftest import REPO

    docs = list(yaml.safe_load_all((REPO / "infra/webhook/receiver.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"}
    for key, text in kinds["ConfigMap"]["data"].items():
        parse_spec(yaml.safe_load(text), key)  # the example specs are valid specs
    dep = kinds["Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"  # one SQLite writer
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["llmship", "webhook", "serve"]
    args = dict(a.lstrip("-").split("=", 1) for a in c["args"])
    assert args["port"] == str(c["ports"][0]["containerPort"])
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert args["specs"] in mounts and str(Path(args["db"]).parent) in mounts
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert kinds["Service"]["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
    secret = yaml.safe_load((REPO / "infra/webhook/secret.template.yaml").read_text())
    assert set(secret["stringData"]) == {webhook.ENV_MLFLOW_SECRET, webhook.ENV_HF_SECRET}
    assert c["envFrom"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    routes = {r.path for r in webhook.create_app(webhook.WebhookConfig(mlflow_secret=None)).routes}
    assert {"/webhooks/mlflow", "/webhooks/huggingface", "/healthz"} <= routes


def test_secrets_never_show_in_config_reprs(monkeypatch):
    from deployments.webhook import WebhookConfig

    monkeypatch.setenv("LLMSHIP_MLFLOW_WEBHOOK_SECRET", "very-secret-value")
    monkeypatch.delenv("LLMSHIP_HF_WEBHOOK_SECRET", raising=False)
    monkeypatch.delenv("LLMSHIP_HF_WEBHOOK_SECRET_BLOCK", raising=False)
    cfg = WebhookConfig.from_env()
    assert "very-secret-value" not in repr(cfg) and "very-secret-value" not in str(cfg.secret_sources)
    assert cfg.mlflow_secret.get_secret_value() == "very-secret-value" and cfg.hf_secret is None


def test_no_secret_at_all_is_bad_input(monkeypatch):
    from deployments.webhook import WebhookConfig

    for var in ("LLMSHIP_MLFLOW_WEBHOOK_SECRET", "LLMSHIP_HF_WEBHOOK_SECRET",
                "LLMSHIP_MLFLOW_WEBHOOK_SECRET_BLOCK", "LLMSHIP_HF_WEBHOOK_SECRET_BLOCK"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BadInput) as err:
        WebhookConfig.from_env()
    assert err.value.exit_code == 2 and "LLMSHIP_MLFLOW_WEBHOOK_SECRET" in err.value.render()


def test_decide_retries_hiccups_but_not_bad_input():
    from prefect.states import Failed

    from flows.scheduled_promotion import _retry_unless_bad_input
    from tasks.errors import StageFailed

    assert not _retry_unless_bad_input(None, None, Failed(data=BadInput("resolve", "x", "bad")))
    assert _retry_unless_bad_input(None, None, Failed(data=StageFailed("resolve", "x", "registry down")))
