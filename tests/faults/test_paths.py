"""Hostile names and links in model sources and artifacts: nothing is written or read outside.

Every S3 key, Hub file name and manifest entry must land inside its destination, and a link in
a model folder must not leave that folder; anything else is bad input (exit 2) naming it, and
nothing is written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest
import yaml

from tasks.download import download, resolve_source
from tasks.errors import BadInput
from tasks.storage.manifest import Lineage, hash_tree, read_manifest
from tests.faults.conftest import REPO, llmship_cmd, subprocess_env
from tests.hubserver import Commit, HubServer, Repo
from tests.servers import free_port

pytestmark = pytest.mark.faults
LINEAGE = Lineage(source="file:///x", revision="r", model_digest="d" * 64)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture
def bucket(s3_endpoint, aws_env, request):
    name = "faults-" + request.node.name.lower().replace("_", "-")[:40].rstrip("-")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket=name)
    return s3, name


def _put_model(s3, bucket: str, prefix: str, model: Path) -> None:
    for f in sorted(model.iterdir()):
        if f.is_file():
            s3.upload_file(str(f), bucket, f"{prefix}{f.name}")


# -- S3 keys ------------------------------------------------------------------------------------
def test_s3_absolute_key_is_refused_and_nothing_is_written(tiny_model, bucket, s3_endpoint, tmp_path):
    s3, name = bucket
    target = tmp_path / "escaped" / "evil.txt"  # where the key points, if it were joined as a path
    _put_model(s3, name, "", tiny_model)
    s3.put_object(Bucket=name, Key=str(target), Body=b"written outside the download folder")
    resolved = resolve_source(f"s3://{name}", s3_endpoint)
    cache = tmp_path / "cache"
    with pytest.raises(BadInput) as err:
        download(resolved, cache_dir=str(cache), s3_endpoint_url=s3_endpoint)
    assert err.value.exit_code == 2 and err.value.stage == "download"
    assert str(target) in err.value.render()
    assert not target.exists() and not target.parent.exists()
    assert files_under(cache) == [], "nothing is downloaded when one key is refused"


# (keys like "a/./b" never reach S3: the HTTP client removes dot segments from the URL)
@pytest.mark.parametrize("bad_key", ["zz/../../../../escape.txt", "/etc-escape.txt", "./config.json"])
def test_s3_keys_that_do_not_name_a_file_inside_are_refused(tiny_model, bucket, s3_endpoint, tmp_path, bad_key):
    s3, name = bucket
    _put_model(s3, name, "models/m1/", tiny_model)
    s3.put_object(Bucket=name, Key=f"models/m1/{bad_key}", Body=b"x")
    resolved = resolve_source(f"s3://{name}/models/m1", s3_endpoint)
    cache = tmp_path / "cache"
    with pytest.raises(BadInput) as err:
        download(resolved, cache_dir=str(cache), s3_endpoint_url=s3_endpoint)
    assert f"models/m1/{bad_key}" in err.value.render()
    assert files_under(cache) == []
    assert not list(tmp_path.rglob("escape.txt")) and not Path("/etc-escape.txt").exists()


def _cannot_deploy(tmp_path: Path) -> dict[str, str]:
    """Should the refusal regress, the promotion still must not start a server on this machine."""
    return {"LLMSHIP_VLLM_PYTHON": "/bin/false", "LLMSHIP_CACHE": str(tmp_path / "cache")}


@pytest.mark.parametrize("rel", ["", ".", "..", "/abs", "a/../b", "a/./b", "a//b", "a/", "a\0b", "../x"])
def test_relative_paths_that_leave_or_blur_their_folder(tmp_path, rel):
    from tasks.storage.manifest import inside, relpath_problem

    assert relpath_problem(rel)
    with pytest.raises(BadInput):
        inside(tmp_path, rel, "download", f"s3://b/{rel}")
    (tmp_path / "out").symlink_to("/tmp", target_is_directory=True)
    with pytest.raises(BadInput, match="outside its folder"):
        inside(tmp_path, "out/x", "download", "s3://b/out/x")
    assert inside(tmp_path, "a/b.bin", "download", "x") == tmp_path / "a" / "b.bin"


def test_s3_absolute_key_through_llmship_promote_exits_2(tiny_model, bucket, s3_endpoint, tmp_path, no_leftovers):
    s3, name = bucket
    target = tmp_path / "outside" / "evil.txt"
    _put_model(s3, name, "", tiny_model)
    s3.put_object(Bucket=name, Key=str(target), Body=b"x")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "evil-s3", "model": {"source": f"s3://{name}"},
                                    "target": {"kind": "local", "port": free_port()},
                                    "storage": {"uri": str(tmp_path / "store"), "s3_endpoint_url": s3_endpoint}}))
    proc = subprocess.run(llmship_cmd("promote", str(spec)), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(**_cannot_deploy(tmp_path)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert f"[download] s3://{name}{target}" in out or str(target) in out
    assert "Traceback" not in out
    assert not target.exists() and files_under(tmp_path / "cache" / "s3") == []


# -- manifest entries -----------------------------------------------------------------------------
def _evil_manifest(entry: str) -> str:
    return json.dumps({"schema": "llmship.manifest/v1", "name": "x", "artifact_digest": "a" * 64, "spec_digest": "s" * 64,
                       "created_at": "2026-01-01T00:00:00+00:00", "lineage": LINEAGE.model_dump(),
                       "files": [{"path": entry, "size": 1, "sha256": "0" * 64}]})


@pytest.mark.parametrize("entry", ["../../../escape.txt", "/etc/passwd", "a/../../b", "", "."])
def test_manifest_entries_outside_the_artifact_are_refused(tmp_path, entry):
    folder = tmp_path / "artifact"
    folder.mkdir()
    (folder / "manifest.json").write_text(_evil_manifest(entry))
    with pytest.raises(BadInput) as err:
        read_manifest(folder)
    assert err.value.exit_code == 2 and repr(entry)[1:-1] in err.value.render()


def test_s3_artifact_with_a_hostile_manifest_is_refused(tiny_model, bucket, s3_endpoint, tmp_path):
    s3, name = bucket
    _put_model(s3, name, "store/artifacts/x/0123/", tiny_model)
    s3.put_object(Bucket=name, Key="store/artifacts/x/0123/manifest.json", Body=_evil_manifest("../../../../escape.txt").encode())
    with pytest.raises(BadInput) as err:
        from tasks.storage.s3 import download_s3_prefix

        download_s3_prefix(f"s3://{name}/store/artifacts/x/0123", tmp_path / "dl", endpoint_url=s3_endpoint)
    assert "../../../../escape.txt" in err.value.render()
    assert not list(tmp_path.rglob("escape.txt"))


# -- Hub file names --------------------------------------------------------------------------------
@pytest.mark.parametrize("evil", ["../../../../escape.txt", "../othersha/escape.txt", "/tmp/llmship-faults-escape.txt"])
def test_hub_file_names_outside_the_snapshot_are_refused(tiny_model, tmp_path, monkeypatch, evil):
    with HubServer() as hub:
        files = {p.name: p.read_bytes() for p in tiny_model.iterdir() if p.is_file()}
        files[evil] = b"written outside the snapshot"
        sha = "e" * 40
        hub.hub.repos["acme/evil"] = Repo(commits=[Commit(sha=sha, files=files, date="2026-01-01T00:00:00+00:00",
                                                          title="evil")], refs={"main": sha})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        resolved = resolve_source(f"hf://acme/evil@{sha}")
        cache = tmp_path / "cache"
        with pytest.raises(BadInput) as err:
            download(resolved, cache_dir=str(cache))
    assert err.value.exit_code == 2 and evil in err.value.render()
    assert not list(tmp_path.rglob("escape.txt")) and not Path("/tmp/llmship-faults-escape.txt").exists()
    assert [f for f in files_under(cache) if not f.endswith((".lock", ".gitignore"))] == []


# -- symlinks ------------------------------------------------------------------------------------------
@pytest.fixture
def linked_model(tiny_model, tmp_path) -> tuple[Path, Path]:
    """A model folder holding a link to a 'credentials' file outside it."""
    secret = tmp_path / "home" / ".aws" / "credentials"
    secret.parent.mkdir(parents=True)
    secret.write_text("[default]\naws_secret_access_key = not-for-the-artifact\n")
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "notes.txt").symlink_to(secret)
    return model, secret


def test_link_leaving_the_model_folder_is_refused_at_resolve(linked_model):
    model, _ = linked_model
    with pytest.raises(BadInput) as err:
        resolve_source(f"file://{model}")
    assert err.value.exit_code == 2 and "notes.txt" in err.value.render()


def test_link_leaving_the_folder_is_not_published_locally(linked_model, tmp_path):
    from tasks.storage.local import publish_local

    model, secret = linked_model
    store = tmp_path / "store"
    with pytest.raises(BadInput) as err:
        publish_local(str(model), str(store), "tiny", "s" * 64, LINEAGE)
    assert "notes.txt" in err.value.render()
    assert not (store / "artifacts").exists() or files_under(store / "artifacts") == []


def test_link_leaving_the_folder_is_not_uploaded(linked_model, bucket, s3_endpoint):
    from tasks.storage.s3 import publish_s3

    model, _ = linked_model
    s3, name = bucket
    with pytest.raises(BadInput) as err:
        publish_s3(str(model), f"s3://{name}/store", "tiny", "s" * 64, LINEAGE, endpoint_url=s3_endpoint)
    assert "notes.txt" in err.value.render()
    assert s3.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0


def test_link_leaving_the_folder_through_pvc_and_a_linked_dir(linked_model, tmp_path):
    from tasks.storage.pvc import publish_pvc

    model, secret = linked_model
    (model / "notes.txt").unlink()
    (model / "extra").symlink_to(secret.parent, target_is_directory=True)  # a folder link out
    (tmp_path / "mnt" / "claim").mkdir(parents=True)
    with pytest.raises(BadInput) as err:
        publish_pvc(str(model), "pvc://claim/llmship", "tiny", "s" * 64, LINEAGE, str(tmp_path / "mnt"))
    assert "extra" in err.value.render()
    assert files_under(tmp_path / "mnt") == []


def test_dangling_link_is_refused(tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "gone.bin").symlink_to(tmp_path / "nowhere.bin")
    with pytest.raises(BadInput) as err:
        hash_tree(model)
    assert "gone.bin" in err.value.render()


def test_links_inside_the_folder_are_resolved(tiny_model, tmp_path):
    from tasks.storage.local import publish_local

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "sub").mkdir()
    (model / "sub" / "extra.json").write_text('{"k": 1}')
    (model / "extra.json").symlink_to("sub/extra.json")
    (model / "again").symlink_to("sub", target_is_directory=True)
    (model / "loop").symlink_to(".", target_is_directory=True)  # a cycle is not followed for ever
    digest, files = hash_tree(model)
    paths = {f.path for f in files}
    assert {"extra.json", "sub/extra.json", "again/extra.json"} <= paths
    assert not any(p.startswith("loop/") for p in paths)
    art = publish_local(str(model), str(tmp_path / "store"), "tiny", "s" * 64, LINEAGE)
    published = Path(art.local_path)
    assert (published / "extra.json").read_text() == '{"k": 1}' and not (published / "extra.json").is_symlink()
    assert art.digest == digest


def test_outside_link_through_llmship_promote_exits_2_naming_it(linked_model, tmp_path, no_leftovers):
    model, _ = linked_model
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "linked", "model": {"source": f"file://{model}"},
                                    "target": {"kind": "local", "port": free_port()},
                                    "storage": {"uri": str(tmp_path / "store")}}))
    proc = subprocess.run(llmship_cmd("promote", str(spec)), cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(**_cannot_deploy(tmp_path)))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-2000:]
    assert "notes.txt" in out and "Traceback" not in out
    assert "not-for-the-artifact" not in out
    assert files_under(tmp_path / "store") == [] or not (tmp_path / "store" / "artifacts").exists()
    assert os.path.islink(model / "notes.txt")  # the source folder is left as it was


@pytest.mark.parametrize("url", ["pvc://../escape", "pvc://./x", "pvc://claim/../../escape"])
def test_pvc_urls_that_leave_the_mount_root_are_refused(tiny_model, tmp_path, url):
    from tasks.storage.pvc import publish_pvc

    (tmp_path / "mnt" / "claim").mkdir(parents=True)
    with pytest.raises(BadInput) as err:
        publish_pvc(str(tiny_model), url, "tiny", "s" * 64, LINEAGE, str(tmp_path / "mnt" / "claim"))
    assert err.value.exit_code == 2
    assert files_under(tmp_path) == []
