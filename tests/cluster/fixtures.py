"""pytest fixtures for the real control plane (tests/cluster/harness.py).

tests/cluster/conftest.py imports them; a conftest elsewhere does the same to use them:

    from tests.cluster.fixtures import kube_cluster, kube_namespace, pytest_runtest_makereport  # noqa: F401

- `kube_cluster` (session): a started TestCluster (Standard mode, KServe in namespace
  `kserve`); its attributes: kubeconfig (admin kubeconfig path), server, ca_file, logs_dir,
  kserve_namespace, deployment_mode, binaries (paths, versions), timings; its helpers:
  api_client(), core / apps / custom, apply(obj), pods(ns, selector), isvc_pods(ns, name),
  get_isvc, wait_for, wait_isvc_condition, make_bound_pvc, add_node, diagnose(ns).
- `kube_namespace` (function): a fresh namespace name, deleted after the test; when the test
  fails its pods, events, InferenceServices and the components' log tails are printed.
- `kube_cluster_factory` (session): start(**TestCluster options) -> another started cluster
  (one per distinct options, e.g. kserve_namespace="kserve-system" or a changed
  inferenceservice-config), stopped at the end of the session.

A cluster that cannot start fails the test with the component's log tail (never a skip).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.cluster.harness import ClusterStartError, TestCluster


# One cluster per distinct options for the whole session, shared by every conftest that imports
# these fixtures (each import is its own fixture definition to pytest); a cluster that failed to
# start fails each test that asks for it at once, with the same message.
_clusters: dict[str, TestCluster | str] = {}


def _cluster(tmp_path_factory, **options) -> TestCluster:
    key = json.dumps(options, sort_keys=True, default=str)
    found = _clusters.get(key)
    if isinstance(found, str):
        pytest.fail(found, pytrace=False)
    if found is not None and found.procs and all(p.alive() for p in found.procs.values()):
        return found
    workdir = Path(tmp_path_factory.mktemp("testcluster"))
    cluster = TestCluster(workdir, **options)
    try:
        cluster.start()
    except ClusterStartError as e:
        _clusters[key] = f"the test cluster did not start (logs in {workdir / 'logs'}):\n{e}"
        pytest.fail(_clusters[key], pytrace=False)
    if os.environ.get("LLMSHIP_TESTCLUSTER_VERBOSE"):
        print(f"test cluster up in {cluster.timings['total']:.1f} s: "
              + json.dumps({k: round(v, 1) for k, v in cluster.timings.items()}))
    _clusters[key] = cluster
    return cluster


def _stop_all() -> None:
    for key, cluster in list(_clusters.items()):
        if isinstance(cluster, TestCluster):
            cluster.stop()
            del _clusters[key]


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory):
    yield _cluster(tmp_path_factory)
    _stop_all()


@pytest.fixture(scope="session")
def kube_cluster_factory(tmp_path_factory):
    def start(**options) -> TestCluster:
        return _cluster(tmp_path_factory, **options)

    yield start
    _stop_all()


@pytest.fixture
def kube_namespace(kube_cluster, request):
    # short: KServe's Standard mode refuses an InferenceService whose host name
    # "<isvc>-predictor-<namespace>" is longer than 63 characters
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower().removeprefix("test_"))[:16].strip("-")
    try:
        kube_cluster.check_alive()
    except ClusterStartError as e:
        pytest.fail(str(e), pytrace=False)
    ns = kube_cluster.create_namespace(prefix=name or "t")
    yield ns
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(f"\n===== test cluster state for namespace {ns} =====\n{kube_cluster.diagnose(ns)}")
    kube_cluster.delete_namespace(ns)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
