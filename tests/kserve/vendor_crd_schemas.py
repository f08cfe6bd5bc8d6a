"""Regenerate tasks/kserve/schemas/*.json from the real KServe CRDs.

    .venv/bin/python -m tests.kserve.vendor_crd_schemas [/path/to/kserve-crds]

Keeps each served version's openAPIV3Schema, the subresources and the names, and drops
`description` texts (most of the bytes, no part of admission). test_admission checks the
vendored copy still matches the CRDs in ../shared/kserve-crds when they are present.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from tasks.kserve.admission import crd_from_yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SRC = REPO.parent / "shared" / "kserve-crds"
OUT = REPO / "tasks" / "kserve" / "schemas"
FILES = {
    "InferenceService": "serving.kserve.io_inferenceservices.yaml",
    "ServingRuntime": "serving.kserve.io_servingruntimes.yaml",
    "ClusterServingRuntime": "serving.kserve.io_clusterservingruntimes.yaml",
    "LLMInferenceService": "serving.kserve.io_llminferenceservices.yaml",
}


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def vendored(crd: dict) -> dict:
    out = crd_from_yaml(crd)
    for version in out["versions"].values():
        version["schema"] = strip(version["schema"])
    return out


def main(src: Path = DEFAULT_SRC) -> None:
    for kind, fname in FILES.items():
        crd = yaml.safe_load((src / fname).read_text())
        (OUT / f"{kind}.json").write_text(json.dumps(vendored(crd), sort_keys=True, separators=(",", ":")))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SRC)
