"""The local artifact store's manifest and the stable pointer (state file)."""

from __future__ import annotations

import json

from tasks.local.state import ServerRecord, append_history, clear_record, list_records, read_stable, write_record
from tasks.storage.local import publish_local
from tasks.storage.manifest import Lineage, hash_tree, read_manifest, verify_folder


def lineage(digest: str) -> Lineage:
    return Lineage(source="file:///m", revision=digest, model_digest=digest)


def test_publish_writes_every_file_then_the_manifest(tiny_model, tmp_path):
    digest, files = hash_tree(tiny_model)
    art = publish_local(str(tiny_model), str(tmp_path / "store"), "tiny", "spec-sha", lineage(digest))
    assert art.digest == digest
    manifest = json.loads(open(art.manifest_uri).read())
    assert manifest["schema"] == "llmship.manifest/v1"
    assert manifest["artifact_digest"] == digest and manifest["spec_digest"] == "spec-sha"
    assert {f["path"] for f in manifest["files"]} == {f.path for f in files}
    for f in manifest["files"]:
        assert len(f["sha256"]) == 64 and f["size"] > 0
    assert manifest["lineage"]["model_digest"] == digest
    assert not verify_folder(art.local_path, read_manifest(art.local_path))
    # Publishing the same content again reuses the artifact.
    again = publish_local(str(tiny_model), str(tmp_path / "store"), "tiny", "other-spec", lineage(digest))
    assert again == art


def test_verify_finds_a_changed_file(tiny_model, tmp_path):
    digest, _ = hash_tree(tiny_model)
    art = publish_local(str(tiny_model), str(tmp_path / "store"), "tiny", "s", lineage(digest))
    cfg = tmp_path / "store" / "artifacts" / "tiny" / digest[:16] / "config.json"
    cfg.unlink()  # break the hard link before writing, as an editor would
    cfg.write_text("{}")
    assert verify_folder(art.local_path, read_manifest(art.local_path)) == ["config.json: content differs from the manifest"]


def test_half_written_artifact_is_replaced(tiny_model, tmp_path):
    digest, _ = hash_tree(tiny_model)
    dest = tmp_path / "store" / "artifacts" / "tiny" / digest[:16]
    dest.mkdir(parents=True)
    (dest / "config.json").write_text("partial")  # a crash before manifest.json
    art = publish_local(str(tiny_model), str(tmp_path / "store"), "tiny", "s", lineage(digest))
    assert not verify_folder(art.local_path, read_manifest(art.local_path))


def test_state_records_round_trip(tmp_path):
    store = str(tmp_path / "store")
    rec = ServerRecord(name="tiny", served_name="tiny", artifact_digest="a" * 64, artifact_path="/x", source="file:///m",
                       revision="r", spec_digest="s", base_url="http://127.0.0.1:1", pid=None, log_path=None, since="t")
    assert read_stable(store, "tiny") is None
    write_record(store, rec)
    write_record(store, rec.model_copy(update={"artifact_digest": "b" * 64}), "candidate")
    assert read_stable(store, "tiny") == rec
    assert [(role, r.artifact_digest[0]) for role, r in list_records(store)] == [("candidate", "b"), ("stable", "a")]
    clear_record(store, "tiny", "candidate")
    assert [role for role, _ in list_records(store)] == ["stable"]
    append_history(store, "tiny", {"event": "promoted"})
    history = (tmp_path / "store" / "state" / "tiny.history.jsonl").read_text().splitlines()
    assert json.loads(history[0])["event"] == "promoted"
