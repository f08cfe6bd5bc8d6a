"""A stand-in for promote_model with the same parameters, for the trigger tests.

It does what a promotion does to the parts this area owns, with the product's own code:
take the target's promotion slot, resolve `models:/` through the registry, record the new
stable on the local state file and the `serving` alias on MLflow. It skips vLLM (the
promote flow's own tests cover it) and holds the slot for LLMSHIP_TEST_HOLD_S instead.
Each run appends one JSON line to LLMSHIP_TEST_RECORDS.

`python -m tests.triggers.promote_stub` serves it as `test-promote/promote` with the
triggers deployments/prefect.yaml gives the real `promote` deployment.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks.concurrency import promotion_slot, target_key
from tasks.spec import load_spec, parse_spec


@flow(name="test-promote")
def test_promote(spec_path: str | None = None, spec: dict | None = None, trigger: dict | None = None) -> dict:
    s = load_spec(spec_path) if spec_path else parse_spec(spec, "inline spec")
    rec: dict = {"flow_run_id": str(flow_run.id), "name": s.name, "source": s.model.source, "spec": spec,
                 "trigger": trigger}
    with promotion_slot(s):
        rec["start"] = time.time()
        version = None
        if s.model.source.startswith("models:/"):
            from tasks.registry import record_promotion, resolve

            rv = resolve(s.model.source)
            rec["registry_version"] = version = rv.version
            rec["source_uri"] = rv.source_uri
        time.sleep(float(os.environ.get("LLMSHIP_TEST_HOLD_S", "0")))
        # A test can keep the slot held until it has seen a second promotion wait for it.
        hold = Path(os.environ["LLMSHIP_TEST_RECORDS"] + f".hold-{s.name}")
        deadline = time.monotonic() + 120
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        if s.target.kind == "local" and s.storage.uri != "./.llmship/store":
            from tasks.local.state import ServerRecord, now_iso, write_record

            values = dict(
                name=s.name, served_name=s.served_name, artifact_digest="0" * 64, artifact_path="/nonexistent",
                source=s.model.source, revision=version or s.model.source.rpartition("@")[2], registry_version=version,
                spec_digest=s.digest(), base_url="http://127.0.0.1:1", pid=None, log_path=None, since=now_iso(),
            )
            write_record(s.storage.uri, ServerRecord(**values))
        if version is not None:
            record_promotion(s.model.source, version, target_key(s))  # as promote_model calls it
        rec["end"] = time.time()
    with open(os.environ["LLMSHIP_TEST_RECORDS"], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(rec) + "\n")
    return rec


if __name__ == "__main__":
    from deployments.deploy import deployment_triggers

    test_promote.serve(name="promote", triggers=deployment_triggers("promote"), limit=4)
