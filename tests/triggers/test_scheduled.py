"""The cron flow on a real MLflow server (and the hub test server): promote only when the champion moved."""

from __future__ import annotations

import json

import pytest

from tests.triggers.conftest import read_records, register_version, wait_records

pytestmark = pytest.mark.servers


def _spec(name: str, source: str, store) -> dict:
    return {"name": name, "model": {"source": source}, "target": {"kind": "local"}, "storage": {"uri": str(store)}}


def test_cron_promotes_when_the_alias_moves_and_not_otherwise(tracking, stub_runner, records, tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    from flows.scheduled_promotion import scheduled_promotion

    c = MlflowClient(tracking)
    v1 = register_version(tracking, "champ", tmp_path, "one")
    v2 = register_version(tracking, "champ", tmp_path, "two")
    c.set_registered_model_alias("champ", "champion", v1)
    store = tmp_path / "store"
    spec = _spec("champ", "models:/champ@champion", store)
    state = store / "state" / "champ.json"

    d = scheduled_promotion(spec=spec, promote_deployment=stub_runner)
    assert d.promote and d.reason == f"nothing serves champ yet; models:/champ@champion is {v1}"
    wait_records(records, lambda r: r["name"] == "champ")
    assert json.loads(state.read_text())["registry_version"] == v1
    assert c.get_model_version_by_alias("champ", "serving").version == v1  # recorded back on the registry
    assert c.get_model_version("champ", v1).tags["llmship.serving_target"] == "local:champ"

    caplog.set_level("INFO")
    d = scheduled_promotion(spec=spec, promote_deployment=stub_runner)
    assert not d.promote
    assert d.reason.startswith(f"models:/champ@champion is {v1}, which already serves (the local state file ")
    assert len([r for r in read_records(records) if r["name"] == "champ"]) == 1

    c.set_registered_model_alias("champ", "champion", v2)
    d = scheduled_promotion(spec=spec, promote_deployment=stub_runner)
    assert d.promote and f"moved to {v2}" in d.reason and f"serves {v1}" in d.reason
    assert d.pinned_spec["model"]["source"] == f"models:/champ/{v2}"
    recs = wait_records(records, lambda r: r["name"] == "champ", n=2)
    assert [r["registry_version"] for r in recs] == [v1, v2]
    assert json.loads(state.read_text())["registry_version"] == v2
    assert c.get_model_version_by_alias("champ", "serving").version == v2


def test_cron_follows_a_hugging_face_branch(stub_runner, records, tmp_path, monkeypatch):
    from flows.scheduled_promotion import scheduled_promotion
    from tests.hubserver import HubServer

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text('{"v": 1}')
    with HubServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        first = hub.hub.push("acme/branchy", folder, title="v1")
        spec = _spec("branchy", "hf://acme/branchy@main", tmp_path / "store")
        d = scheduled_promotion(spec=spec, promote_deployment=stub_runner)
        assert d.promote and d.pinned_spec["model"]["source"] == f"hf://acme/branchy@{first}"
        wait_records(records, lambda r: r["name"] == "branchy")
        assert not scheduled_promotion(spec=spec, promote_deployment=stub_runner).promote
        (folder / "config.json").write_text('{"v": 2}')
        second = hub.hub.push("acme/branchy", folder, title="v2")
        d = scheduled_promotion(spec=spec, promote_deployment=stub_runner)
        assert d.promote and d.wanted.revision == second != first
        wait_records(records, lambda r: r["name"] == "branchy", n=2)


def test_pinned_spec_is_left_alone(tracking, tmp_path):
    from flows.scheduled_promotion import scheduled_promotion

    d = scheduled_promotion(spec=_spec("pinned", "models:/champ/1", tmp_path / "store"))
    assert not d.promote and "is pinned" in d.reason


def test_missing_alias_fails_clearly(tracking, tmp_path):
    from tasks.errors import StageFailed
    from tasks.registry.champion import decide
    from tasks.spec import parse_spec

    register_version(tracking, "aliasless", tmp_path)
    with pytest.raises(StageFailed) as err:
        decide(parse_spec(_spec("aliasless", "models:/aliasless@champion", tmp_path / "store")))
    assert "no such model version" in err.value.render() and "set_registered_model_alias" in err.value.render()


def test_no_tracking_uri_is_bad_input_without_retries(monkeypatch, tmp_path):
    from flows.scheduled_promotion import scheduled_promotion
    from tasks.errors import BadInput

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(BadInput) as err:
        scheduled_promotion(spec=_spec("nouri", "models:/nouri@champion", tmp_path / "store"))
    assert "MLFLOW_TRACKING_URI" in err.value.render() and err.value.exit_code == 2


def test_cron_reads_what_serves_from_the_cluster(tracking, kube_cluster, kube_namespace, tmp_path):
    """On kserve, what serves is llmship's record on the cluster (ConfigMap llmship-<name>, as a
    promotion writes it), on the real control plane (tests/cluster)."""
    from mlflow.tracking import MlflowClient

    from tasks.kserve import records
    from tasks.kserve.cluster import Cluster
    from tasks.registry.champion import decide
    from tasks.spec import parse_spec

    c = MlflowClient(tracking)
    v1 = register_version(tracking, "kchamp", tmp_path, "one")
    v2 = register_version(tracking, "kchamp", tmp_path, "two")
    c.set_registered_model_alias("kchamp", "champion", v1)
    spec = parse_spec({"name": "kchamp", "model": {"source": "models:/kchamp@champion"},
                       "target": {"kind": "kserve", "namespace": kube_namespace, "kubeconfig": str(kube_cluster.kubeconfig)}})
    d = decide(spec)
    assert d.promote and d.reason.startswith("nothing serves kchamp yet")
    records.write_serving(Cluster.connect(spec), spec, records.ServingRecord(
        revision="r" * 64, artifact_digest="d" * 64, source=f"models:/kchamp/{v1}", registry_version=v1, isvc="kchamp"))
    where = f"ConfigMap llmship-kchamp in {kube_namespace}"
    d = decide(spec)
    assert not d.promote and d.reason == f"models:/kchamp@champion is {v1}, which already serves ({where})"
    c.set_registered_model_alias("kchamp", "champion", v2)
    d = decide(spec)
    assert d.promote and d.reason == f"models:/kchamp@champion moved to {v2}; {where} serves {v1}"
