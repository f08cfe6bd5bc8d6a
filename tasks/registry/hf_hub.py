"""Hugging Face: the newest commit of a branch, read with huggingface_hub.

HF_ENDPOINT and HF_TOKEN are read from the environment by huggingface_hub itself.
"""

from __future__ import annotations

import os
import re

from tasks.errors import BadInput, StageFailed

SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def split_hf(source: str) -> tuple[str, str | None]:
    """hf://org/name@rev -> ("org/name", "rev"); rev is None when the source is unpinned."""
    if not source.startswith("hf://"):
        raise BadInput("resolve", source, "not a Hugging Face source", "write hf://org/name@branch")
    repo, _, rev = source[len("hf://") :].partition("@")
    return repo, rev or None


def is_commit(rev: str | None) -> bool:
    return bool(rev and SHA_RE.match(rev))


def branch_head(repo_id: str, branch: str = "main", token: str | None = None) -> str:
    """The commit sha the branch points at now."""
    from huggingface_hub import HfApi

    try:
        # HF_ENDPOINT read per call, not at import, so a mirror can be named without a restart
        info = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token).model_info(repo_id, revision=branch)
    except Exception as err:
        raise StageFailed(
            "resolve", f"hf://{repo_id}@{branch}", f"could not read the branch head: {type(err).__name__}: {err}",
            "check the repo and branch exist, HF_TOKEN for private repos, and HF_ENDPOINT if you use a mirror",
        ) from None
    if not info.sha:
        raise StageFailed("resolve", f"hf://{repo_id}@{branch}", "the hub returned no commit sha", "retry; check HF_ENDPOINT")
    return info.sha
