"""Fixtures of the real control plane for the tests in this folder (see fixtures.py)."""

from tests.cluster.fixtures import (  # noqa: F401
    kube_cluster,
    kube_cluster_factory,
    kube_namespace,
    pytest_runtest_makereport,
)
