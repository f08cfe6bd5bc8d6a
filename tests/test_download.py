"""Resolve and download: file:// folders, hf:// through a local Hub API endpoint, bad models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.download import download, resolve_source
from tasks.errors import BadInput
from tasks.storage.manifest import hash_tree
from tests.hubserver import HubServer


@pytest.fixture(scope="module")
def hub(tiny_model):
    with HubServer() as server:
        yield server


def test_file_source_is_pinned_by_content(tiny_model, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(tiny_model, copy)
    resolved = resolve_source(f"file://{copy}")
    assert resolved.kind == "file" and resolved.revision == hash_tree(copy)[0]
    local = download(resolved)
    assert local.path == str(copy) and local.digest == resolved.revision
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("128", "129", 1))
    assert resolve_source(f"file://{copy}").revision != resolved.revision


def test_hf_source_downloads_the_pinned_commit(hub, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    first = hub.hub.push("acme/tiny", tiny_model, title="v1")
    changed = tmp_path / "v2"
    shutil.copytree(tiny_model, changed)
    cfg = json.loads((changed / "config.json").read_text())
    cfg["rms_norm_eps"] = 1e-5
    (changed / "config.json").write_text(json.dumps(cfg))
    second = hub.hub.push("acme/tiny", changed, title="v2")

    # A branch resolves to its head commit; a sha stays where it was pinned.
    assert resolve_source("hf://acme/tiny@main").revision == second
    pinned = resolve_source(f"hf://acme/tiny@{first}")
    assert pinned.revision == first and pinned.location == "acme/tiny"

    local = download(pinned, cache_dir=str(tmp_path / "cache"))
    assert json.loads((Path(local.path) / "config.json").read_text()).get("rms_norm_eps") != 1e-5
    assert local.digest == hash_tree(tiny_model)[0]
    assert any(r.startswith(f"GET acme/tiny@{first}/model.safetensors") for r in hub.hub.requests)


def test_hf_unknown_repo_and_revision_are_bad_input(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    with pytest.raises(BadInput, match="repository not found"):
        resolve_source("hf://acme/nope@main")
    hub.hub.push("acme/other", Path(__file__).parent / "data", title="x")
    with pytest.raises(BadInput, match="revision 'deadbeef' not found"):
        resolve_source("hf://acme/other@deadbeef")


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "model folder not found"),
        ("no-config", "no config.json"),
        ("corrupt-config", "corrupt config.json"),
        ("no-weights", "no weight files"),
    ],
)
def test_bad_model_folders(tiny_model, tmp_path, breakage, message):
    folder = tmp_path / "m"
    if breakage != "missing":
        shutil.copytree(tiny_model, folder)
    if breakage == "no-config":
        (folder / "config.json").unlink()
    elif breakage == "corrupt-config":
        (folder / "config.json").write_text("{not json")
    elif breakage == "no-weights":
        (folder / "model.safetensors").unlink()
    with pytest.raises(BadInput, match=message) as info:
        resolve_source(f"file://{folder}")
    assert info.value.stage == "resolve" and info.value.exit_code == 2
