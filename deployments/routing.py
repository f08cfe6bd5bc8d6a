"""From a registry event to Prefect events: which promotion specs follow this model?

The receiver watches a folder of promotion specs. A spec follows
- `models:/<name>@<alias>`: promoted when that alias moves (model_version_alias.created);
- `models:/<name>/latest`: promoted when a version is created (model_version.created);
- `hf://<org>/<name>@<branch>` (or unpinned, branch main): promoted when the branch moves.
Each match becomes one `llmship.promotion.requested` event carrying the spec, with its
source pinned to the exact version or commit, so the run promotes what the registry said.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from tasks.errors import LlmshipError
from tasks.registry import hf_hub
from tasks.registry.mlflow_registry import MODELS_RE
from tasks.spec import PromotionSpec, parse_spec

log = logging.getLogger("llmship.webhook")

PROMOTION_EVENT = "llmship.promotion.requested"
RESOURCE_PREFIX = "llmship.model."
_NS = uuid.UUID("0f1e4a52-7d1c-4c38-9d1b-6c1b5d0c2a11")


@dataclass(frozen=True)
class FollowedSpec:
    path: Path
    raw: dict
    spec: PromotionSpec


class SpecIndex:
    """The promotion specs in a folder, re-read when a file changes (no restart needed)."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self._stamp: tuple = ()
        self._specs: list[FollowedSpec] = []

    def specs(self) -> list[FollowedSpec]:
        if self.folder is None or not self.folder.is_dir():
            return []
        files = sorted([*self.folder.glob("*.yaml"), *self.folder.glob("*.yml")])
        stamp = tuple((str(p), p.stat().st_mtime_ns) for p in files)
        if stamp != self._stamp:
            loaded = []
            for p in files:
                try:
                    raw = yaml.safe_load(p.read_text())
                    loaded.append(FollowedSpec(p, raw, parse_spec(raw, str(p))))
                except (LlmshipError, yaml.YAMLError, OSError) as err:
                    log.warning("skipping spec %s: %s", p, str(err).splitlines()[0])
            self._specs, self._stamp = loaded, stamp
        return self._specs

    def mlflow(self, model: str, alias: str | None = None, new_version: bool = False) -> list[FollowedSpec]:
        out = []
        for f in self.specs():
            m = MODELS_RE.match(f.spec.model.source)
            if not m or m["name"] != model:
                continue
            if (alias is not None and m["alias"] == alias) or (new_version and m["version"] == "latest"):
                out.append(f)
        return out

    def hf(self, repo: str, branch: str) -> list[FollowedSpec]:
        out = []
        for f in self.specs():
            if not f.spec.model.source.startswith("hf://"):
                continue
            r, rev = hf_hub.split_hf(f.spec.model.source)
            if r == repo and (rev or "main") == branch:
                out.append(f)
        return out


def event_id(delivery_key: str, n: int) -> str:
    """Stable per delivery, so re-sending after a crash does not make a second event."""
    return str(uuid.uuid5(_NS, f"{delivery_key}#{n}"))


def make_event(name: str, model: str, payload: dict, delivery_key: str, n: int, labels: dict | None = None) -> dict:
    return {
        "id": event_id(delivery_key, n),
        "occurred": datetime.now(timezone.utc).isoformat(),
        "event": name,
        "resource": {"prefect.resource.id": RESOURCE_PREFIX + model, "prefect.resource.name": model, **(labels or {})},
        "related": [],
        "payload": payload,
    }


def promotion_events(
    followed: list[FollowedSpec], *, registry: str, model: str, revision: str, pinned_source: str,
    registry_event: str, delivery_key: str,
) -> list[dict]:
    events = []
    for n, f in enumerate(followed, start=1):
        pinned = dict(f.raw)
        pinned["model"] = {**(f.raw.get("model") or {}), "source": pinned_source}
        payload = {
            "spec": pinned, "spec_name": f.spec.name, "spec_file": str(f.path), "registry": registry, "model": model,
            "revision": revision, "follows": f.spec.model.source, "registry_event": registry_event, "delivery": delivery_key,
        }
        events.append(make_event(PROMOTION_EVENT, model, payload, delivery_key, n, {"llmship.spec": f.spec.name}))
    return events
