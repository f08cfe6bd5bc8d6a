"""Shared test set-up: one real Prefect server for the whole run, and a tiny model.

The Prefect server is started before any test imports prefect (settings are read at
import), unless PREFECT_API_URL already names one. Ephemeral mode would start a
temporary server for every flow run (~10 s each here).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.servers import prefect_server

_stack = ExitStack()
RUN_DIR = Path(tempfile.mkdtemp(prefix="llmship-tests-"))


def pytest_configure(config):
    os.environ.setdefault("LLMSHIP_CACHE", str(RUN_DIR / "cache"))
    os.environ.setdefault("PREFECT_HOME", str(RUN_DIR / "prefect-client"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not os.environ.get("PREFECT_API_URL") and not hasattr(config, "workerinput"):
        os.environ["PREFECT_API_URL"] = _stack.enter_context(prefect_server(RUN_DIR / "prefect-server"))


def pytest_unconfigure(config):
    import sys

    if "prefect.logging.handlers" in sys.modules:  # send the last run logs before the server stops
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    _stack.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama with a locally trained tokenizer (see tasks/example_model.py)."""
    from tasks.example_model import write_example_model

    return write_example_model(tmp_path_factory.mktemp("models") / "tiny-llama")
