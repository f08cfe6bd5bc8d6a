"""A local endpoint for the Hugging Face Hub API: the routes huggingface_hub's
model_info / snapshot_download / list_repo_commits call, over real HTTP (HF_ENDPOINT).

Repos hold commits of real files; a branch points at its newest commit. Weight files are
served as LFS objects (sha256 etag), the rest as git blobs (sha1 etag), as the Hub does.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.servers import free_port

LFS_SUFFIXES = (".safetensors", ".bin", ".pt")


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    date: str
    title: str


@dataclass
class Repo:
    commits: list[Commit] = field(default_factory=list)  # oldest first
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []

    def push(self, repo_id: str, folder: Path, branch: str = "main", title: str = "upload") -> str:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
                 if p.is_file() and not p.name.startswith(".")}
        repo = self.repos.setdefault(repo_id, Repo())
        sha = hashlib.sha1(f"{repo_id}{len(repo.commits)}{title}".encode() + b"".join(files.values())).hexdigest()
        repo.commits.append(Commit(sha=sha, files=files, date=datetime.now(timezone.utc).isoformat(), title=title))
        repo.refs[branch] = sha
        return sha

    # -- lookup ---------------------------------------------------------------------------
    def _commit(self, repo_id: str, rev: str) -> Commit | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        sha = repo.refs.get(rev, rev)
        return next((c for c in repo.commits if c.sha == sha), None)

    @staticmethod
    def _etag(name: str, data: bytes) -> tuple[str, bool]:
        if name.endswith(LFS_SUFFIXES):
            return hashlib.sha256(data).hexdigest(), True
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(), False

    # -- routes ---------------------------------------------------------------------------
    def app(self) -> Starlette:
        def not_found(what: str, code: str = "RepoNotFound") -> Response:
            return JSONResponse({"error": what}, status_code=404, headers={"X-Error-Code": code})

        async def revision(request: Request) -> Response:
            p = request.path_params
            repo_id = f"{p['org']}/{p['name']}"
            self.requests.append(f"info {repo_id}@{p['rev']}")
            if repo_id not in self.repos:
                return not_found(f"{repo_id} not found")
            c = self._commit(repo_id, p["rev"])
            if c is None:
                return not_found(f"revision {p['rev']} not found", "RevisionNotFound")
            return JSONResponse({"id": repo_id, "modelId": repo_id, "sha": c.sha, "private": False,
                                 "siblings": [{"rfilename": f} for f in sorted(c.files)]})

        async def tree(request: Request) -> Response:
            p = request.path_params
            repo_id = f"{p['org']}/{p['name']}"
            c = self._commit(repo_id, p["rev"])
            if c is None:
                return not_found(f"{repo_id}@{p['rev']} not found", "RevisionNotFound")
            entries = []
            for name, data in sorted(c.files.items()):
                etag, lfs = self._etag(name, data)
                entry = {"type": "file", "path": name, "size": len(data),
                         "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
                if lfs:
                    entry["lfs"] = {"oid": etag, "size": len(data), "pointerSize": 134}
                entries.append(entry)
            return JSONResponse(entries)

        async def commits(request: Request) -> Response:
            p = request.path_params
            repo_id = f"{p['org']}/{p['name']}"
            repo = self.repos.get(repo_id)
            head = self._commit(repo_id, p["rev"])
            if repo is None or head is None:
                return not_found(f"{repo_id}@{p['rev']} not found", "RevisionNotFound")
            upto = repo.commits[: repo.commits.index(head) + 1]
            return JSONResponse([{"id": c.sha, "title": c.title, "message": c.title, "authors": [{"user": "llmship"}],
                                  "date": c.date} for c in reversed(upto)])

        async def resolve(request: Request) -> Response:
            p = request.path_params
            repo_id = f"{p['org']}/{p['name']}"
            self.requests.append(f"{request.method} {repo_id}@{p['rev']}/{p['path']}")
            c = self._commit(repo_id, p["rev"])
            if c is None or p["path"] not in c.files:
                return not_found(f"{p['path']} not found", "EntryNotFound")
            data = c.files[p["path"]]
            etag, lfs = self._etag(p["path"], data)
            headers = {"X-Repo-Commit": c.sha, "ETag": f'"{etag}"', "Content-Length": str(len(data)),
                       "Accept-Ranges": "bytes"}
            if lfs:
                headers["X-Linked-Etag"] = f'"{etag}"'
                headers["X-Linked-Size"] = str(len(data))
            body = b"" if request.method == "HEAD" else data
            return Response(body, headers=headers, media_type="application/octet-stream")

        return Starlette(routes=[
            Route("/api/models/{org}/{name}/revision/{rev:path}", revision),
            Route("/api/models/{org}/{name}/tree/{rev}", tree),
            Route("/api/models/{org}/{name}/tree/{rev}/{sub:path}", tree),
            Route("/api/models/{org}/{name}/commits/{rev:path}", commits),
            Route("/{org}/{name}/resolve/{rev}/{path:path}", resolve, methods=["GET", "HEAD"]),
        ])


class HubServer:
    """Runs a FakeHub on a loopback port in a background thread."""

    def __init__(self) -> None:
        self.hub = FakeHub()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.hub.app(), host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("hub test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
