"""Fixtures for the predictive tests: example models trained in the MLServer environment, real MLServer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.predictive.env import mlserver_python


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "predictive_flow: the whole promotion of a predictive model through `llmship promote` "
        "(runs once flows/promote.py serves sklearn / xgboost; LLMSHIP_RUN_PREDICTIVE_FLOW=1 forces it)")


needs_mlserver = pytest.mark.skipif(mlserver_python() is None,
                                    reason="no MLServer environment: run `make setup-mlserver`")


_PRESETS = {
    "good": ("sklearn", {}),
    "worse": ("sklearn", {"worse": True}),
    "slow": ("sklearn", {"slow": True}),
    "xgboost": ("xgboost", {}),
    "xgboost-worse": ("xgboost", {"worse": True}),
}


@pytest.fixture(scope="session")
def example_model(tmp_path_factory):
    """example_model("good" | "worse" | "slow" | "xgboost" | "xgboost-worse") -> the example's folder.

    Trained in the MLServer environment on first use, once a test run (see tasks/predictive/example.py)."""
    if mlserver_python() is None:
        pytest.skip("no MLServer environment: run `make setup-mlserver`")
    from tasks.predictive.example import write_example_predictive

    root = tmp_path_factory.mktemp("predictive-models")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            kind, opts = _PRESETS[name]
            made[name] = Path(write_example_predictive(root / name, kind, **opts).folder)
        return made[name]

    return get


# The real control plane (tests/cluster): KServe v0.20's controller and webhooks, KWOK pods.
from tests.cluster.fixtures import kube_cluster, kube_namespace, pytest_runtest_makereport  # noqa: E402,F401
