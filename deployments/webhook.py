"""The model-registry webhook receiver: an ASGI app (Starlette on uvicorn).

Self-hosted Prefect has events and automations but no webhooks, so this app takes MLflow and
Hugging Face deliveries, checks them, and turns each valid one into Prefect events. A
deployment trigger in deployments/prefect.yaml turns `llmship.promotion.requested` into a
promote run.

    POST /webhooks/mlflow        X-MLflow-Signature: v1,<base64 HMAC-SHA256>
    POST /webhooks/huggingface   X-Webhook-Secret: <secret>
    GET  /healthz

Answers: 202 accepted (or ignored: unknown event), 200 duplicate delivery, 401 missing or
bad signature or stale timestamp, 413 body over 1 MiB, 400 malformed JSON. The answer comes
before the events are sent: a delivery is written to a SQLite outbox, and a background task
posts its events to the Prefect API, retrying until the server takes them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deployments.routing import SpecIndex, make_event, promotion_events
from deployments.webhook_store import DeliveryStore
from tasks.errors import BadInput

log = logging.getLogger("llmship.webhook")

MAX_BODY = 1024 * 1024
TOLERANCE_S = 300
MLFLOW_EVENTS = ("model_version.created", "model_version_alias.created")
ENV_MLFLOW_SECRET = "LLMSHIP_MLFLOW_WEBHOOK_SECRET"
ENV_HF_SECRET = "LLMSHIP_HF_WEBHOOK_SECRET"
ENV_MLFLOW_BLOCK = "LLMSHIP_MLFLOW_WEBHOOK_SECRET_BLOCK"
ENV_HF_BLOCK = "LLMSHIP_HF_WEBHOOK_SECRET_BLOCK"
ENV_SPECS = "LLMSHIP_WEBHOOK_SPECS"
ENV_DB = "LLMSHIP_WEBHOOK_DB"
DEFAULT_DB = ".llmship/webhook/deliveries.sqlite"


@dataclass
class WebhookConfig:
    mlflow_secret: SecretStr | None = None
    hf_secret: SecretStr | None = None
    specs_dir: str | None = None
    db_path: str = DEFAULT_DB
    max_body: int = MAX_BODY
    tolerance_s: int = TOLERANCE_S
    secret_sources: dict[str, str] = field(default_factory=dict)  # provider -> "env X" / "block Y", for the log

    @classmethod
    def from_env(cls, specs_dir: str | None = None, db_path: str | None = None,
                 mlflow_block: str | None = None, hf_block: str | None = None) -> "WebhookConfig":
        """Secrets from the environment, or from Prefect Secret blocks named by option or env."""
        cfg = cls(specs_dir=specs_dir or os.environ.get(ENV_SPECS), db_path=db_path or os.environ.get(ENV_DB) or DEFAULT_DB)
        for provider, env, block_env, block in (
            ("mlflow", ENV_MLFLOW_SECRET, ENV_MLFLOW_BLOCK, mlflow_block),
            ("huggingface", ENV_HF_SECRET, ENV_HF_BLOCK, hf_block),
        ):
            value, origin = os.environ.get(env) or None, f"env {env}"
            block = block or os.environ.get(block_env)
            if value is None and block:
                value, origin = _secret_block(block), f"Prefect Secret block {block!r}"
            if value:
                setattr(cfg, "mlflow_secret" if provider == "mlflow" else "hf_secret", SecretStr(value))
                cfg.secret_sources[provider] = origin
        if cfg.mlflow_secret is None and cfg.hf_secret is None:
            raise BadInput(
                "webhook", "secrets", "no webhook secret is set, so no delivery could be verified",
                f"set {ENV_MLFLOW_SECRET} and/or {ENV_HF_SECRET}, or name Prefect Secret blocks with "
                f"{ENV_MLFLOW_BLOCK} / {ENV_HF_BLOCK}",
            )
        return cfg


def _secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name).get())
    except Exception as err:
        raise BadInput(
            "webhook", f"Secret block {name!r}", f"could not load it: {type(err).__name__}",
            "create it (prefect block create secret) or check PREFECT_API_URL",
        ) from None


# -- signatures ---------------------------------------------------------------------------


def mlflow_signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """v1,<base64 HMAC-SHA256(secret, "{delivery_id}.{timestamp}.{raw body}")>: MLflow's scheme."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def mlflow_signature_ok(secret: str, delivery_id: str, timestamp: str, body: bytes, header: str) -> bool:
    expected = mlflow_signature(secret, delivery_id, timestamp, body).encode()
    ok = False
    for candidate in header.split():  # Standard Webhooks allows several space-separated signatures
        ok |= hmac.compare_digest(candidate.encode(), expected)
    return ok


# -- the app ------------------------------------------------------------------------------


class Emitter:
    """Posts pending outbox rows to the Prefect events API; wakes on each new delivery."""

    def __init__(self, store: DeliveryStore):
        self.store = store
        self._wake = asyncio.Event()
        self.backoff_max = 30.0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        from prefect.client.orchestration import get_client

        backoff = 0.5
        client = None
        try:
            while True:
                rows = await run_in_threadpool(self.store.pending)
                if not rows:
                    self._wake.clear()
                    await self._wake.wait()
                    await asyncio.sleep(0.05)  # gather a burst of deliveries into one post
                    continue
                keys = [k for k, _ in rows]
                try:
                    if client is None:
                        # In ephemeral mode the first client starts a temporary Prefect server and
                        # waits for it synchronously (tens of seconds on a busy host): do that in a
                        # worker thread, so the receiver keeps answering meanwhile.
                        await run_in_threadpool(_reach_prefect)
                        client = await get_client().__aenter__()
                    # one post for every pending delivery; event ids are stable, so a retry is harmless
                    await client.request("POST", "/events", json=[e for _, events in rows for e in events])
                    await run_in_threadpool(self.store.mark_emitted, keys)
                    for key, events in rows:
                        log.info("delivery %s: emitted %d Prefect event(s): %s", key, len(events),
                                 ", ".join(e["event"] for e in events))
                    backoff = 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as err:
                    await run_in_threadpool(self.store.mark_failed, keys, f"{type(err).__name__}: {err}")
                    log.warning("could not emit events for %d delivery(ies) (%s: %s); retrying in %.1fs",
                                len(keys), type(err).__name__, err, backoff)
                    if client is not None:
                        with contextlib.suppress(Exception):
                            await client.__aexit__(None, None, None)
                        client = None
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), backoff)
                    self._wake.clear()
                    backoff = min(backoff * 2, self.backoff_max)
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.__aexit__(None, None, None)


def _reach_prefect() -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.api_healthcheck()


def _answer(status: int, outcome: str, detail: str = "", **extra) -> JSONResponse:
    return JSONResponse({"outcome": outcome, "detail": detail, **extra}, status_code=status)


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None when it is over the limit (read no further than that)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None


async def _accept(request: Request, key: str, provider: str, summary: str, events: list[dict]) -> JSONResponse:
    state = request.app.state
    # sub-millisecond SQLite insert: cheaper inline than a hop to the thread pool
    fresh = state.store.claim(key, provider, summary, events)
    if not fresh:
        log.info("duplicate %s delivery %s: already handled, nothing done", provider, key)
        return _answer(200, "duplicate", "this delivery was handled before", delivery=key)
    if not events:
        log.info("%s delivery %s ignored: %s", provider, key, summary)
        return _answer(202, "ignored", summary, delivery=key)
    state.emitter.wake()
    promotions = sum(e["event"] == "llmship.promotion.requested" for e in events)
    log.info("%s delivery %s accepted: %s; %d promotion(s) requested", provider, key, summary, promotions)
    return _answer(202, "accepted", summary, delivery=key, promotions=promotions)


async def mlflow_hook(request: Request) -> JSONResponse:
    cfg: WebhookConfig = request.app.state.cfg
    body = await _read_body(request, cfg.max_body)
    if body is None:
        log.warning("mlflow delivery refused: body over %d bytes", cfg.max_body)
        return _answer(413, "too_large", f"body over {cfg.max_body} bytes")
    if cfg.mlflow_secret is None:
        log.warning("mlflow delivery refused: no mlflow webhook secret is configured")
        return _answer(401, "unauthorized", "no secret configured for mlflow deliveries")
    h = request.headers
    delivery_id, ts, sig = h.get("x-mlflow-delivery-id"), h.get("x-mlflow-timestamp"), h.get("x-mlflow-signature")
    if not (delivery_id and ts and sig):
        log.warning("mlflow delivery refused: signature headers missing")
        return _answer(401, "unauthorized", "X-MLflow-Signature, X-MLflow-Timestamp and X-MLflow-Delivery-Id are required")
    if not mlflow_signature_ok(cfg.mlflow_secret.get_secret_value(), delivery_id, ts, body, sig):
        log.warning("mlflow delivery %s refused: bad signature", delivery_id[:64])
        return _answer(401, "unauthorized", "bad signature")
    if not ts.isdigit() or abs(time.time() - int(ts)) > cfg.tolerance_s:
        log.warning("mlflow delivery %s refused: timestamp %s is more than %ds away", delivery_id[:64], ts[:20], cfg.tolerance_s)
        return _answer(401, "stale", f"timestamp outside {cfg.tolerance_s}s")
    doc = _json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        log.warning("mlflow delivery %s refused: malformed JSON", delivery_id[:64])
        return _answer(400, "bad_json", 'expected a JSON object {"entity", "action", "timestamp", "data"}')
    kind = f"{doc.get('entity')}.{doc.get('action')}"
    data = doc["data"]
    key = f"mlflow:{delivery_id}"
    if kind not in MLFLOW_EVENTS:
        return await _accept(request, key, "mlflow", f"unknown event {kind[:80]!r}", [])
    name, version = data.get("name"), data.get("version")
    if not isinstance(name, str) or not isinstance(version, (str, int)) or not name:
        return _answer(400, "bad_json", f"{kind} needs data.name and data.version")
    version = str(version)
    index: SpecIndex = request.app.state.specs
    if kind == "model_version_alias.created":
        alias = data.get("alias")
        if not isinstance(alias, str) or not alias:
            return _answer(400, "bad_json", "model_version_alias.created needs data.alias")
        followed = index.mlflow(name, alias=alias)
        summary = f"{kind}: models:/{name}@{alias} -> version {version}"
    else:
        followed = index.mlflow(name, new_version=True)
        summary = f"{kind}: models:/{name}/{version}"
    fact = make_event(f"llmship.registry.mlflow.{kind}", name, {"registry_event": kind, "data": data, "delivery": key}, key, 0)
    events = [fact] + promotion_events(
        followed, registry="mlflow", model=name, revision=version, pinned_source=f"models:/{name}/{version}",
        registry_event=kind, delivery_key=key,
    )
    if not followed:
        summary += " (no spec follows it)"
    return await _accept(request, key, "mlflow", summary, events)


async def hf_hook(request: Request) -> JSONResponse:
    from huggingface_hub import WebhookPayload
    from pydantic import ValidationError

    cfg: WebhookConfig = request.app.state.cfg
    body = await _read_body(request, cfg.max_body)
    if body is None:
        log.warning("huggingface delivery refused: body over %d bytes", cfg.max_body)
        return _answer(413, "too_large", f"body over {cfg.max_body} bytes")
    given = request.headers.get("x-webhook-secret")
    if cfg.hf_secret is None or not given or not hmac.compare_digest(given.encode(), cfg.hf_secret.get_secret_value().encode()):
        log.warning("huggingface delivery refused: missing or wrong X-Webhook-Secret")
        return _answer(401, "unauthorized", "missing or wrong X-Webhook-Secret")
    doc = _json(body)
    if not isinstance(doc, dict):
        return _answer(400, "bad_json", "expected a JSON object")
    try:
        p = WebhookPayload.model_validate(doc)
    except ValidationError as err:
        return _answer(400, "bad_json", f"not a Hugging Face webhook payload ({err.error_count()} error(s))")
    kind = f"{p.event.scope}.{p.event.action}"
    moved = [r for r in (p.updatedRefs or []) if r.ref.startswith("refs/heads/") and r.newSha]
    if kind != "repo.content.update" or p.repo.type != "model" or not moved:
        log.info("huggingface delivery ignored: %s on %s %s", kind[:80], p.repo.type, p.repo.name[:120])
        return _answer(202, "ignored", f"{kind} on a {p.repo.type}: not a branch update of a model")
    repo = p.repo.name
    # HF sends no delivery id: a ref moving to a sha is the delivery's identity
    key = "hf:" + repo + ":" + ",".join(f"{r.ref}={r.newSha}" for r in moved)
    index: SpecIndex = request.app.state.specs
    events = [make_event("llmship.registry.hf.repo.content.update", repo,
                         {"registry_event": kind, "updatedRefs": [r.model_dump() for r in moved], "delivery": key}, key, 0)]
    summaries = []
    for r in moved:
        branch = r.ref[len("refs/heads/") :]
        followed = index.hf(repo, branch)
        events += promotion_events(
            followed, registry="hf", model=repo, revision=r.newSha, pinned_source=f"hf://{repo}@{r.newSha}",
            registry_event=kind, delivery_key=f"{key}#{branch}",
        )
        summaries.append(f"hf://{repo}@{branch} -> {r.newSha[:12]}" + ("" if followed else " (no spec follows it)"))
    return await _accept(request, key, "huggingface", f"{kind}: " + "; ".join(summaries), events)


async def healthz(request: Request) -> JSONResponse:
    store: DeliveryStore = request.app.state.store
    pending = await run_in_threadpool(store.count, "pending")
    return JSONResponse({"ok": True, "pending_events": pending})


def create_app(cfg: WebhookConfig) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.store = DeliveryStore(cfg.db_path)
        app.state.emitter = Emitter(app.state.store)
        task = asyncio.create_task(app.state.emitter.run())  # also sends what a previous run left pending
        for provider, origin in cfg.secret_sources.items():
            log.info("%s deliveries verified with the secret from %s", provider, origin)
        log.info("following promotion specs in %s; delivery log %s", cfg.specs_dir or "(none)", Path(cfg.db_path).resolve())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            app.state.store.close()

    app = Starlette(
        routes=[
            Route("/webhooks/mlflow", mlflow_hook, methods=["POST"]),
            Route("/webhooks/huggingface", hf_hook, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.cfg = cfg
    app.state.specs = SpecIndex(cfg.specs_dir)
    return app


def serve(cfg: WebhookConfig, host: str = "127.0.0.1", port: int = 8787, log_level: str = "info") -> None:
    """Run the receiver until SIGTERM or SIGINT; then stop it and everything it started.

    uvicorn shuts down gracefully on either signal and then raises the signal again with the
    handler that was there before it. With Python's default SIGTERM action that kills the process
    on the spot, so exit handlers never ran and the temporary Prefect server of ephemeral mode (it
    stops at exit) ran on. So the handlers in place before uvicorn's make the re-raised signal a
    normal return, and the process exits 0 with its exit handlers run. And whatever ends the
    process, even kill -9, its ephemeral Prefect server exits with it (the lifeline of
    tasks.concurrency.guard_ephemeral_prefect_server).
    """
    import signal

    import uvicorn

    from tasks.concurrency import guard_ephemeral_prefect_server

    guard_ephemeral_prefect_server()
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host=host, port=port, log_level=log_level, access_log=False))
    stopped_by: list[int] = []

    def after_uvicorn(signum: int, frame) -> None:
        if not server.started:  # before uvicorn took the signals over (or it never started): stop now
            raise SystemExit(0 if signum == signal.SIGTERM else 130)
        stopped_by.append(signum)  # uvicorn has shut down and re-raised the signal that stopped it

    previous = {sig: signal.signal(sig, after_uvicorn) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped_by:
        log.info("stopped by %s: receiver shut down; its Prefect client and any temporary Prefect server stop at exit",
                 signal.Signals(stopped_by[-1]).name)
