"""Fixtures for the fault suite: moto's S3 server (shared with the build tests), helpers to
look at processes from the outside, and subprocess environments for Prefect's two modes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.build.conftest import aws_env, s3_endpoint  # noqa: F401  (moto's real S3 server on loopback)

REPO = Path(__file__).resolve().parents[2]


def subprocess_env(ephemeral_home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for an llmship subprocess.

    With ephemeral_home, PREFECT_API_URL is removed, so the subprocess runs Prefect in its
    ephemeral mode (the embedded default) with its own PREFECT_HOME; otherwise it talks to the
    test session's Prefect server.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}
    if ephemeral_home is not None:
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(ephemeral_home)
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        # a fresh PREFECT_HOME migrates its database first; on a loaded 2-core host that alone
        # can pass Prefect's default of 20 s
        env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    return env


def llmship_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def wait_until(pred, timeout_s: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(every)


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pids) -> list[int]:
    import psutil

    out = []
    for p in pids:
        try:
            proc = psutil.Process(p)
            if proc.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def prefect_servers_of(pids) -> list[int]:
    """Those of pids that are Prefect API servers (the ephemeral one runs uvicorn on create_app)."""
    import psutil

    out = []
    for p in alive(pids):
        try:
            cmd = " ".join(psutil.Process(p).cmdline())
        except psutil.Error:
            continue
        if "prefect.server.api.server:create_app" in cmd or "prefect server start" in cmd:
            out.append(p)
    return out


@pytest.fixture
def kill_list():
    """Processes a test started and must not leave behind, whatever happens to the test."""
    import psutil

    pids: list[int] = []
    yield pids
    for p in pids:
        try:
            psutil.Process(p).kill()
        except psutil.Error:
            pass


def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment names text (a test's own tmp_path)."""
    import psutil

    me = os.getpid()
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.info["pid"] == me:
            continue
        try:
            if text in " ".join(p.info["cmdline"] or []) or any(text in v for v in p.environ().values()):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.info["pid"])
        except psutil.Error:
            continue
    return out


@pytest.fixture
def no_leftovers(tmp_path):
    """After the test, nothing that names its tmp_path may still run; whatever does is killed
    (so a regression cannot leave servers behind on a shared machine) and the test fails."""
    import psutil

    yield tmp_path
    left = processes_mentioning(str(tmp_path))
    for p in left:
        try:
            psutil.Process(p).kill()
        except psutil.Error:
            pass
    assert not left, f"processes left running: {left}"
