"""One promotion per serving target at a time, held as a Prefect global concurrency limit.

The limit is named after the target (kind, namespace, name) and holds one slot. The slot is
leased: the holder renews it while it runs, so a worker that dies frees the target when the
lease runs out (lease_duration) instead of blocking it for ever.

A second promotion for the same target either waits for the slot or is cancelled, and logs
one line saying which. Usage, in the promote flow:

    with promotion_slot(spec):          # on_busy: "wait" (default) or "cancel"
        ... every stage that touches the target ...
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Literal

from tasks.errors import StageFailed
from tasks.spec import PromotionSpec

STAGE = "concurrency"
OnBusy = Literal["wait", "cancel"]
_log = logging.getLogger("llmship.concurrency")


class PromotionBusy(StageFailed):
    """Another promotion holds this target, and this one was cancelled (or gave up waiting)."""


def target_key(spec: PromotionSpec) -> str:
    """kserve:<namespace>:<name> or local:<name>; Prefect limit names may not hold '/'."""
    t = spec.target
    return f"kserve:{t.namespace}:{spec.name}" if t.kind == "kserve" else f"local:{spec.name}"


def limit_name(spec_or_key: PromotionSpec | str) -> str:
    key = spec_or_key if isinstance(spec_or_key, str) else target_key(spec_or_key)
    return f"llmship-promote:{key}"


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a flow or task run
        return _log


def ensure_limit(name: str) -> None:
    """Create the one-slot limit if it is missing; two promotions racing to create it is fine."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass


def _busy(err: BaseException) -> bool:
    """True when the server said 423 Locked: the slot is held by someone else."""
    cause = err.__cause__
    return getattr(getattr(cause, "response", None), "status_code", None) == 423


@contextmanager
def promotion_slot(
    spec: PromotionSpec | str,
    on_busy: OnBusy | None = None,
    wait_timeout_s: float | None = None,
    lease_duration_s: float = 300,
) -> Iterator[str]:
    """Hold the target's slot for the body. Yields the limit name.

    on_busy: "wait" blocks until the running promotion ends (at most wait_timeout_s, None for
    no limit); "cancel" raises PromotionBusy at once. Defaults to the spec's `on_busy` and
    `busy_timeout_s` when it has them, else "wait" with no time limit.
    """
    from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError, ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    name = limit_name(spec)
    # the spec may say (on_busy, busy_timeout_s); explicit arguments win
    if on_busy is None:
        on_busy = getattr(spec, "on_busy", None) or "wait"
    if wait_timeout_s is None:
        wait_timeout_s = getattr(spec, "busy_timeout_s", None)
    log = _logger()
    try:
        ensure_limit(name)
    except Exception as err:
        raise StageFailed(
            STAGE, name, f"could not reach the Prefect API to create the target's concurrency limit: {err}",
            "check PREFECT_API_URL points at a running Prefect server",
        ) from None

    stack = ExitStack()
    try:
        # first try without waiting, so the log can say whether this run had to wait
        stack.enter_context(concurrency(name, occupy=1, max_retries=0, strict=True, lease_duration=lease_duration_s))
        log.info("promotion slot %s acquired: no other promotion runs on this target", name)
    except ConcurrencySlotAcquisitionError as err:
        if not _busy(err):
            raise StageFailed(STAGE, name, f"could not take the target's concurrency slot: {err}", "check the Prefect server") from None
        if on_busy == "cancel":
            log.warning("promotion slot %s is busy: another promotion runs on this target; cancelling this one (on_busy=cancel)", name)
            raise PromotionBusy(
                STAGE, name, "another promotion is running on this target; this one was cancelled (on_busy: cancel)",
                "wait for the running promotion to finish, or set on_busy: wait to queue behind it",
            ) from None
        limit = "no time limit" if wait_timeout_s is None else f"at most {wait_timeout_s:g}s"
        log.warning("promotion slot %s is busy: another promotion runs on this target; waiting for it (on_busy=wait, %s)", name, limit)
        t0 = time.monotonic()
        try:
            stack.enter_context(
                concurrency(name, occupy=1, timeout_seconds=wait_timeout_s, strict=True, lease_duration=lease_duration_s)
            )
        except AcquireConcurrencySlotTimeoutError:
            raise PromotionBusy(
                STAGE, name, f"waited {wait_timeout_s:g}s and the running promotion still holds the target",
                "raise wait_timeout_s, or check `prefect gcl inspect` for a stuck holder",
            ) from None
        log.info("promotion slot %s acquired after waiting %.1fs", name, time.monotonic() - t0)
    with stack:
        yield name
