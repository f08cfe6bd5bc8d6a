"""A real Kubernetes control plane with the real KServe controller for the tests (docs/testcluster.md)."""
