"""One promotion per serving target at a time, on the real Prefect server's global concurrency limits."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tasks.concurrency import PromotionBusy, limit_name, promotion_slot
from tests.triggers.conftest import REPO, _env, mlflow_body, register_version, wait_records, write_spec

pytestmark = pytest.mark.servers


def _logs(prefect_api: str, run_id: str, timeout_s: float = 20, contains: str = "") -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.post(f"{prefect_api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
        text = "\n".join(x["message"] for x in r.json())
        if contains in text or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def _wait_for_log(prefect_api: str, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = httpx.post(f"{prefect_api}/logs/filter", json={"limit": 200, "sort": "TIMESTAMP_DESC"})
        if any(text in x["message"] for x in r.json()):
            return
        time.sleep(0.5)
    raise AssertionError(f"no log line {text!r} within {timeout_s} s")


def test_two_triggers_for_one_target_promote_one_at_a_time(tracking, receiver, stub_runner, records, prefect_api, tmp_path):
    write_spec(receiver.specs, "contended", "models:/contended@champion")
    v1 = register_version(tracking, "contended", tmp_path, "one")
    v2 = register_version(tracking, "contended", tmp_path, "two")
    hold = Path(f"{records}.hold-contended")  # the first promotion keeps the slot until the second waits
    hold.touch()
    try:
        for v in (v1, v2):  # two alias moves in quick succession: two deliveries, two runs
            body = mlflow_body("model_version_alias.created", {"name": "contended", "alias": "champion", "version": v})
            assert receiver.post_mlflow(body).status_code == 202
        _wait_for_log(prefect_api, f"promotion slot {limit_name('local:contended')} is busy")
    finally:
        hold.unlink(missing_ok=True)

    recs = sorted(wait_records(records, lambda r: r["name"] == "contended", n=2), key=lambda r: r["start"])
    first, second = recs
    assert {first["registry_version"], second["registry_version"]} == {v1, v2}
    assert second["start"] >= first["end"], "the two promotions of one target overlapped"
    waited = _logs(prefect_api, second["flow_run_id"], contains="waiting for it")
    assert f"promotion slot {limit_name('local:contended')} is busy" in waited
    assert "waiting for it (on_busy=wait" in waited
    assert "acquired after waiting" in waited


def _hold(key: str, seconds: float, flag: Path) -> subprocess.Popen:
    """Another process holds the target's slot (its own Prefect client) and touches flag once it has it."""
    code = ("import sys, time, pathlib; from tasks.concurrency import promotion_slot\n"
            "with promotion_slot(sys.argv[1]):\n"
            "    pathlib.Path(sys.argv[3]).touch(); time.sleep(float(sys.argv[2]))\n")
    proc = subprocess.Popen([sys.executable, "-c", code, key, str(seconds), str(flag)], env=_env(), cwd=REPO)
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "holder did not take the slot"
        time.sleep(0.1)
    return proc


def test_cancel_and_wait_behaviour(prefect_api, tmp_path, caplog):
    key = f"local:held-{uuid.uuid4().hex[:6]}"
    holder = _hold(key, 6, tmp_path / "held")
    try:
        caplog.set_level("INFO", logger="llmship.concurrency")
        t0 = time.monotonic()
        with pytest.raises(PromotionBusy) as err:
            with promotion_slot(key, on_busy="cancel"):
                pytest.fail("entered a busy target")
        assert time.monotonic() - t0 < 5
        assert "cancelled" in err.value.render()
        assert "is busy: another promotion runs on this target; cancelling this one (on_busy=cancel)" in caplog.text

        with pytest.raises(PromotionBusy, match="waited 1s"):
            with promotion_slot(key, on_busy="wait", wait_timeout_s=1):
                pytest.fail("entered a busy target")

        with promotion_slot(f"local:free-{uuid.uuid4().hex[:6]}", on_busy="cancel"):
            pass  # another target is not blocked

        with promotion_slot(key, on_busy="wait"):
            assert holder.poll() == 0 or holder.wait(5) == 0  # we got in only after the holder left
        assert "waiting for it (on_busy=wait, no time limit)" in caplog.text
        assert "acquired after waiting" in caplog.text
    finally:
        holder.kill()
        holder.wait()
