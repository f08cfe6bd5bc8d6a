"""One promotion per serving target at a time, held as a Prefect global concurrency limit.

The limit is named after the target (kind, namespace, name) and holds one slot. A second
promotion for the same target either waits for the slot or is cancelled, and logs one line
saying which. Usage, in the promote flow:

    with promotion_slot(spec):          # on_busy: "wait" (default) or "cancel"
        ... every stage that touches the target ...

A holder that dies (kill -9, OOM, a lost node) must not block its target for long. Three
mechanisms, from fastest to broadest:

1. The holder records who it is in a Prefect Variable next to the limit (host, boot id, pid
   namespace, pid and the process's start time, flow run id, lease id). A waiter polls once a
   second; when the record names a process on its own machine that is gone (or a pid now used
   by another process), or a flow run in a final state, it revokes that lease through the API
   (decrement-with-lease), and takes the slot. Measured (tests/faults/test_slot.py): a killed
   `llmship promote` frees its target for the next one within about 2 s, in both modes.
2. The lease is short (LEASE_S = 60 s, the shortest Prefect's API accepts) and renewed by
   Prefect's renewal thread every 45 s, so a holder on another machine, whose pid cannot be
   checked from here, frees the slot when its lease runs out: with a Prefect server the
   repossessor (every 15 s) revokes it within ~75 s, instead of the ~340 s a 300 s lease took.
   The shorter lease does not make an API outage more dangerous: a renewal that fails three
   times in ~5 s cancels the holder whatever the lease is; it only renews more often.
3. In Prefect's ephemeral mode (no PREFECT_API_URL) every llmship process runs its own
   temporary Prefect server on one SQLite database, and by default each keeps leases in its own
   memory and runs no repossessor: a dead holder's slot was never freed. So the ephemeral
   servers llmship's processes start keep leases on disk (Prefect's filesystem lease storage
   under PREFECT_HOME), where another process's server can revoke them; and a waiter in that
   mode revokes expired leases of its limit itself (the repossessor's job).

A Prefect server that llmship's process starts in ephemeral mode is tied to that process with a
lifeline pipe (see guard_ephemeral_prefect_server): the server exits when the process that
started it is gone, however it went (kill -9 included), instead of running on for ever.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import Literal
from uuid import UUID

from tasks.errors import StageFailed
from tasks.spec import PromotionSpec

STAGE = "concurrency"
OnBusy = Literal["wait", "cancel"]
LEASE_S = 60.0  # the shortest lease Prefect accepts; how long a holder on another machine can block
POLL_S = 1.0  # how often a waiter tries again and checks the holder
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


def holder_variable(limit: str) -> str:
    """The Prefect Variable holding the slot holder's record (names allow [A-Za-z0-9_-] only)."""
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", limit)[:180]
    return f"llmship-holder-{readable}-{sha256(limit.encode()).hexdigest()[:10]}"


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


# -- who holds the slot, and whether it still lives -----------------------------------------


def _machine() -> str | None:
    """Host, boot and pid namespace: two processes with the same value can check each other's
    pids. None where /proc is missing (then pids are never judged)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{socket.gethostname()}|{boot}|{pid_ns}"


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (/proc/PID/stat field 22); None when
    there is no such live process (a zombie counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _flow_run_id() -> str | None:
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        return str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    except Exception:
        return None


def _holder_record(limit: str, lease_id: UUID, lease_s: float) -> dict:
    return {"limit": limit, "lease_id": str(lease_id), "lease_s": lease_s, "machine": _machine(),
            "host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
            "flow_run_id": _flow_run_id(), "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _write_holder(client, record: dict) -> None:
    from prefect.client.schemas.actions import VariableCreate, VariableUpdate
    from prefect.exceptions import ObjectAlreadyExists

    name = holder_variable(record["limit"])
    try:
        client.create_variable(VariableCreate(name=name, value=record, tags=["llmship"]))
    except ObjectAlreadyExists:
        client.update_variable(VariableUpdate(name=name, value=record))


def read_holder(client, limit: str) -> dict | None:
    var = client.read_variable_by_name(holder_variable(limit))
    value = getattr(var, "value", None)
    if isinstance(value, str):  # a Variable may come back as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


def _clear_holder(client, limit: str, lease_id: str) -> None:
    """Delete the record if it is still this lease's (never a later holder's)."""
    rec = read_holder(client, limit)
    if rec is not None and rec.get("lease_id") == lease_id:
        client.delete_variable_by_name(holder_variable(limit))


def holder_gone(client, rec: dict) -> str | None:
    """Why the recorded holder is certainly gone, or None when it may be alive."""
    machine = _machine()
    if machine is not None and rec.get("machine") == machine and isinstance(rec.get("pid"), int):
        started = process_start(rec["pid"])
        if started is None:
            return f"its process {rec['pid']} on this host is gone"
        if rec.get("pid_start") is not None and started != rec["pid_start"]:
            return f"its process {rec['pid']} on this host has ended (the pid now belongs to another process)"
        return None
    if rec.get("flow_run_id"):
        from prefect.exceptions import ObjectNotFound

        try:
            run = client.read_flow_run(UUID(rec["flow_run_id"]))
        except ObjectNotFound:
            return f"its flow run {rec['flow_run_id']} no longer exists"
        except ValueError:
            return None
        if run.state is not None and run.state.is_final():
            return f"its flow run {rec['flow_run_id']} is {run.state.name}"
    return None


def _free_dead_holder(client, limit: str, log) -> bool:
    """Revoke the lease of a holder that is gone; True when one was revoked."""
    rec = read_holder(client, limit)
    if rec is None or not rec.get("lease_id"):
        return False
    why = holder_gone(client, rec)
    if why is None:
        return False
    client.release_concurrency_slots_with_lease(UUID(rec["lease_id"]))
    _clear_holder(client, limit, rec["lease_id"])
    log.warning("promotion slot %s was held by a promotion that is gone (%s; host %s, pid %s, since %s); "
                "its lease %s is revoked", limit, why, rec.get("host"), rec.get("pid"), rec.get("since"), rec["lease_id"])
    return True


def _dead_holder_freed(client, limit: str, log) -> bool:
    try:
        return _free_dead_holder(client, limit, log)
    except Exception as err:  # a check that fails now is tried again at the next poll
        _log.debug("promotion slot %s: holder check failed: %s", limit, err)
        return False


def _ephemeral() -> bool:
    from prefect.settings import get_current_settings

    return not get_current_settings().api.url


def _revoke_expired_ephemeral_leases(client, limit: str, log) -> None:
    """Ephemeral mode runs no repossessor: revoke this limit's expired leases (kept on disk by
    llmship's ephemeral servers, see guard_ephemeral_prefect_server)."""
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage
    from prefect.utilities.asyncutils import run_coro_as_sync

    try:
        limit_id = client.read_global_concurrency_limit_by_name(limit).id
        storage = ConcurrencyLeaseStorage()
        for lease_id in run_coro_as_sync(storage.read_expired_lease_ids()) or []:
            lease = run_coro_as_sync(storage.read_lease(lease_id))
            if lease is not None and limit_id in lease.resource_ids:
                client.release_concurrency_slots_with_lease(lease_id)
                log.warning("promotion slot %s: revoked expired lease %s (its holder stopped renewing it)", limit, lease_id)
    except Exception as err:  # tried again at the next poll
        _log.debug("promotion slot %s: expired-lease check failed: %s", limit, err)


# -- the slot ---------------------------------------------------------------------------------


def _try_acquire(client, name: str, lease_s: float) -> UUID | None:
    """One attempt; the lease id, or None when the slot is held (423 Locked)."""
    import httpx
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    run_id = _flow_run_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)) if run_id else None
    try:
        response = client.increment_concurrency_slots_with_lease(names=[name], slots=1, mode="concurrency",
                                                                  lease_duration=lease_s, holder=holder)
    except httpx.HTTPStatusError as err:
        if err.response.status_code == 423:
            return None
        raise StageFailed(STAGE, name, f"could not take the target's concurrency slot: HTTP {err.response.status_code}",
                          "check the Prefect server") from None
    except httpx.TransportError as err:
        raise StageFailed(STAGE, name, f"could not reach the Prefect API: {type(err).__name__}",
                          "check PREFECT_API_URL points at a running Prefect server") from None
    body = response.json()
    if not body.get("limits"):
        raise StageFailed(STAGE, name, "the target's concurrency limit does not exist", "check the Prefect server")
    return UUID(body["lease_id"])


@contextmanager
def promotion_slot(
    spec: PromotionSpec | str,
    on_busy: OnBusy | None = None,
    wait_timeout_s: float | None = None,
    lease_duration_s: float = LEASE_S,
) -> Iterator[str]:
    """Hold the target's slot for the body. Yields the limit name.

    on_busy: "wait" blocks until the running promotion ends (at most wait_timeout_s, None for
    no limit); "cancel" raises PromotionBusy at once. Defaults to the spec's `on_busy` and
    `busy_timeout_s` when it has them, else "wait" with no time limit. While waiting, a holder
    that is gone is noticed and its lease revoked (see the module docstring).
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency._leases import maintain_concurrency_lease  # Prefect's renewal thread

    guard_ephemeral_prefect_server()
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

    with get_client(sync_client=True) as client:
        lease_id = _try_acquire(client, name, lease_duration_s)
        if lease_id is None and _dead_holder_freed(client, name, log):
            lease_id = _try_acquire(client, name, lease_duration_s)
        if lease_id is not None:
            log.info("promotion slot %s acquired: no other promotion runs on this target", name)
        elif on_busy == "cancel":
            log.warning("promotion slot %s is busy: another promotion runs on this target; cancelling this one (on_busy=cancel)", name)
            raise PromotionBusy(
                STAGE, name, "another promotion is running on this target; this one was cancelled (on_busy: cancel)",
                "wait for the running promotion to finish, or set on_busy: wait to queue behind it",
            )
        else:
            limit = "no time limit" if wait_timeout_s is None else f"at most {wait_timeout_s:g}s"
            log.warning("promotion slot %s is busy: another promotion runs on this target; waiting for it (on_busy=wait, %s)", name, limit)
            t0 = time.monotonic()
            ephemeral = _ephemeral()
            while lease_id is None:
                if wait_timeout_s is not None and time.monotonic() - t0 >= wait_timeout_s:
                    raise PromotionBusy(
                        STAGE, name, f"waited {wait_timeout_s:g}s and the running promotion still holds the target",
                        f"raise wait_timeout_s, or see who holds it: `prefect variable inspect {holder_variable(name)}`",
                    )
                pause = POLL_S if wait_timeout_s is None else min(POLL_S, max(0.0, wait_timeout_s - (time.monotonic() - t0)))
                time.sleep(pause)
                if not _dead_holder_freed(client, name, log) and ephemeral:
                    _revoke_expired_ephemeral_leases(client, name, log)
                lease_id = _try_acquire(client, name, lease_duration_s)
            log.info("promotion slot %s acquired after waiting %.1fs", name, time.monotonic() - t0)
        try:
            _write_holder(client, _holder_record(name, lease_id, lease_duration_s))
        except Exception as err:  # e.g. no right to write Variables: the lease alone still guards the target
            log.warning("promotion slot %s: could not record who holds it (%s); should this run die, the "
                        "target frees when its %.0fs lease runs out", name, err, lease_duration_s)
        except BaseException:
            client.release_concurrency_slots_with_lease(lease_id)
            raise
    try:
        with maintain_concurrency_lease(lease_id, lease_duration_s, raise_on_lease_renewal_failure=True):
            yield name
    finally:
        # The record goes first, then the lease, so a record never names a lease that a later
        # holder may have taken over. A run killed in between leaves a lease without a record,
        # which then runs out (mechanisms 2 and 3). A failed release is logged, not raised: it
        # must not hide the body's own error, and the lease runs out the same way.
        try:
            with get_client(sync_client=True) as client:
                try:
                    _clear_holder(client, name, str(lease_id))
                finally:
                    client.release_concurrency_slots_with_lease(lease_id)
        except Exception as err:
            log.warning("promotion slot %s: could not release lease %s (%s); it runs out within %.0fs",
                        name, lease_id, err, lease_duration_s)


# -- the ephemeral Prefect server: a child that cannot outlive its parent ---------------------
# Prefect's ephemeral mode starts `python -m uvicorn ... prefect.server.api.server:create_app` as
# a plain subprocess and stops it at interpreter exit (atexit). A process killed by a signal
# (kill -9, or SIGTERM where nothing turns it into an exit) never runs atexit, so the server ran
# on for ever, holding ~260 MB and, with it, its leases.
#
# The guard changes how that one command is started: the server process gets the read end of a
# pipe whose write end only its parent holds; a thread in the server waits on it, and end of file,
# which the kernel delivers when the parent is gone however it ended, stops the server (SIGTERM to
# itself, which uvicorn handles gracefully; os._exit after 10 s). prctl(PR_SET_PDEATHSIG) was the
# other choice; it fires when the *thread* that started the child ends, and Prefect may start its
# server from a short-lived worker thread, so it would kill a server that is still needed. The
# pipe is also how the guard adds leases on disk (see the module docstring, 3).
#
# Prefect's server module takes seconds to import, so the guard hooks its import instead of
# importing it: nothing is paid unless Prefect starts an ephemeral server anyway.

_SERVER_MODULE = "prefect.server.api.server"
_LEASES_ENV = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
_LEASES_ON_DISK = "prefect.server.concurrency.lease_storage.filesystem"
_LIFELINES: list[int] = []  # write ends, open for as long as this process lives
_LIFELINE_MAIN = """\
# llmship: run a module, and stop it when the parent process is gone (its pipe closes)
import os, runpy, signal, sys, threading, time
fd = int(sys.argv[1])
def watch():
    try:
        while os.read(fd, 1):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
    os._exit(1)
threading.Thread(target=watch, name="llmship-lifeline", daemon=True).start()
module = sys.argv[3]
sys.argv = [module, *sys.argv[4:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class _SubprocessWithLifeline:
    """Stands in for the `subprocess` module inside Prefect's server module only: Popen of
    `python -m uvicorn ...` starts it under the lifeline; everything else is subprocess itself."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args, **kwargs):  # noqa: N802  (subprocess's name)
        args = list(args)
        if args[1:3] != ["-m", "uvicorn"]:
            return subprocess.Popen(args, **kwargs)
        env = dict(kwargs.pop("env", None) or os.environ)
        env.setdefault(_LEASES_ENV, _LEASES_ON_DISK)
        read_end, write_end = os.pipe()
        try:
            proc = subprocess.Popen([args[0], "-c", _LIFELINE_MAIN, str(read_end), *args[1:]], env=env,
                                    pass_fds=(*kwargs.pop("pass_fds", ()), read_end), **kwargs)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        _LIFELINES.append(write_end)
        return proc


def _patch_server_module(module) -> None:
    if not isinstance(getattr(module, "subprocess", None), _SubprocessWithLifeline):
        module.subprocess = _SubprocessWithLifeline()


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches Prefect's server module right after it is first imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _SERVER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            _patch_server_module(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def guard_ephemeral_prefect_server() -> None:
    """Tie every ephemeral Prefect server this process starts to its life (and keep its leases
    on disk). Idempotent; costs nothing when no ephemeral server is started."""
    if _SERVER_MODULE in sys.modules:
        _patch_server_module(sys.modules[_SERVER_MODULE])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


# Importing this module guards the process (the promote flow imports it before its first Prefect
# call, which is when ephemeral mode starts the server).
guard_ephemeral_prefect_server()
