"""The PVC artifact store: pvc://claim/path is a folder under storage.pvc_mount_root on the
worker (the claim mounted at <root>/<claim>), laid out exactly like the local store."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from tasks.errors import BadInput
from tasks.storage.local import publish_local
from tasks.storage.manifest import Lineage
from tasks.values import PublishedArtifact


def parse_pvc_url(url: str) -> tuple[str, str]:
    """pvc://claim/some/path -> ("claim", "some/path")."""
    p = urlparse(url)
    if p.scheme != "pvc" or not p.netloc:
        raise BadInput("publish", url, "not a pvc:// URL", "use pvc://claim/path")
    if not _CLAIM_RE.match(p.netloc):  # a claim name is a DNS subdomain; "..", "." would leave the mount root
        raise BadInput("publish", url, f"{p.netloc!r} is not a PersistentVolumeClaim name",
                       "use pvc://claim/path with the claim's name (lowercase letters, digits, '-', '.')")
    path = p.path.strip("/")
    if ".." in PurePosixPath(path).parts:
        raise BadInput("publish", url, "the path climbs out of the claim", "remove '..' from the path")
    return p.netloc, path


_CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def pvc_path(url: str, mount_root: str) -> Path:
    """Where pvc://claim/path lives on this worker."""
    claim, path = parse_pvc_url(url)
    return Path(mount_root) / claim / path


def publish_pvc(model_dir: str, store_uri: str, name: str, spec_digest: str, lineage: Lineage,
                mount_root: str) -> PublishedArtifact:
    """Publish into the mounted claim; the returned uri is pvc:// so KServe can mount the same path."""
    claim, base = parse_pvc_url(store_uri)
    root = Path(mount_root) / claim
    if not root.is_dir():
        raise BadInput("publish", store_uri, f"claim {claim!r} is not mounted at {root}",
                       "mount the PVC on the worker there, or set storage.pvc_mount_root")
    local = publish_local(model_dir, str(root / base), name, spec_digest, lineage)
    rel = Path(local.uri).relative_to(root).as_posix()
    uri = f"pvc://{claim}/{rel}"
    return PublishedArtifact(uri=uri, local_path=local.local_path, digest=local.digest,
                             manifest_uri=f"{uri}/manifest.json")
