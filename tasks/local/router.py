"""The local target's Router and Observer for the canary machine (tasks.canary.machine).

FrontDoorRouter moves traffic with the name's HAProxy front door: weights per slot, a drain
before an old server stops. LocalObserver measures a step: the spec's load goes through the
front door for the step's window (real clients share it), and each server's own /metrics,
read before and after, say what it did. With `canary.analysis: sequential` (a host too
small for two loaded servers) each server is loaded alone in turn instead, and the front
door still carries the step's weights for real clients.
"""

from __future__ import annotations

import httpx

from tasks.canary.figures import Reading, ServerWindow, parse_reading
from tasks.canary.judge import JudgeRules
from tasks.canary.machine import CanaryMachine, CanaryRecord, Health, Observation, Policy
from tasks.errors import StageFailed
from tasks.failpoints import crash_point
from tasks.local import frontdoor as fd
from tasks.local import server
from tasks.local.deploy import (
    _host_ip, _port, front_door, load_record, save_record, serves, start_server,
)
from tasks.local.state import append_history, clear_record, now_iso, read_record, write_record
from tasks.spec import PromotionSpec

DRAIN_TIMEOUT_S = 120.0


def _read(rec) -> Reading:
    """The server's own metrics now (vLLM serves them beside the API, MLServer on its own port)."""
    try:
        r = httpx.get(rec.metrics_url or rec.base_url.rstrip("/") + "/metrics", timeout=10)
        r.raise_for_status()
    except httpx.HTTPError:
        return Reading()
    return parse_reading(r.text)


class FrontDoorRouter:
    kind = "local front door"

    def __init__(self, spec: PromotionSpec):
        self.spec = spec
        self.store = spec.storage.uri

    def _records(self):
        return read_record(self.store, self.spec.name, "stable"), read_record(self.store, self.spec.name, "candidate")

    def set_weight(self, percent: int) -> None:
        stable, cand = self._records()
        if cand is None or cand.slot is None:
            raise StageFailed("canary", self.spec.name, "no candidate in the front door", "re-run the promotion")
        door = front_door(self.spec)
        if stable is None or stable.slot is None:
            fd.set_weights(door, {cand.slot: 100})
            return
        fd.set_traffic(door, stable.slot, cand.slot, percent)

    def promote(self) -> None:
        stable, cand = self._records()
        if cand is None:
            return  # promoted already: the candidate record goes last
        door = front_door(self.spec)
        weights = {cand.slot: 100}
        if stable is not None and stable.slot and stable.slot != cand.slot:
            weights[stable.slot] = 0
        fd.set_weights(door, weights)
        crash_point("promoting")  # the candidate takes all traffic, the stable pointer not moved yet
        write_record(self.store, cand.model_copy(update={"since": now_iso()}), "stable")
        clear_record(self.store, self.spec.name, "candidate")
        if stable is not None and stable.pid != cand.pid:
            drained = fd.drain_slot(door, stable.slot, timeout_s=DRAIN_TIMEOUT_S) if stable.slot else None
            server.stop_server(stable.pid)
            note = f"drained in {drained.waited_s:.1f} s" if drained else ""
        else:
            note = ""
        append_history(self.store, self.spec.name, {
            "event": "promoted", "revision": cand.serving_revision, "digest": cand.artifact_digest,
            "previous": stable.serving_revision if stable else None, "source": cand.source,
            "registry_version": cand.registry_version, "note": note})

    def rollback(self) -> None:
        stable, cand = self._records()
        door = front_door(self.spec)
        if stable is not None and serves(stable):
            stable = self._restore(door, stable)
        if stable is not None and stable.slot:
            others = {s.name: 0 for s in door.slots if s.name != stable.slot and s.server is not None
                      and s.state == "ready"}
            fd.set_weights(fd.load_frontdoor(self.store, self.spec.name) or door, {stable.slot: 100, **others})
        crash_point("rolling-back")  # stable takes all traffic, the candidate still runs
        if cand is not None:
            if cand.slot:
                fd.drain_slot(door, cand.slot, timeout_s=DRAIN_TIMEOUT_S, allow_empty=stable is None)
            server.stop_server(cand.pid)
            clear_record(self.store, self.spec.name, "candidate")
            append_history(self.store, self.spec.name, {"event": "rolled_back", "revision": cand.serving_revision,
                                                        "digest": cand.artifact_digest, "pid": cand.pid})

    def _restore(self, door: fd.FrontDoor, stable):
        """Stable died: start it again from its artifact and give it back its place."""
        server.stop_server(stable.pid)  # whatever is left of it
        if stable.slot:
            fd.drain_slot(door, stable.slot, timeout_s=1, allow_empty=True)
        ep = start_server(self.spec, stable.artifact_path, stable.artifact_digest, stable.cpus)
        slot = fd.put_server(front_door(self.spec), _host_ip(ep), _port(ep.base_url), weight=0).name
        restored = stable.model_copy(update={"pid": ep.pid, "base_url": ep.base_url, "log_path": ep.log_path,
                                             "slot": slot})
        write_record(self.store, restored, "stable")
        append_history(self.store, self.spec.name, {"event": "stable_restored", "revision": stable.serving_revision,
                                                    "pid": ep.pid, "url": ep.base_url})
        return restored

    def health(self) -> Health:
        stable, cand = self._records()
        c = serves(cand)
        s = serves(stable) if stable is not None else None
        detail = "; ".join(x for x in (f"candidate: {c}" if c else "", f"stable: {s}" if s else "") if x)
        return Health(candidate_ok=c is None, stable_ok=None if stable is None else s is None, detail=detail)


class LocalObserver:
    def __init__(self, spec: PromotionSpec, tokenizer: str | None, on_report=None):
        self.spec = spec
        self.tokenizer = tokenizer
        self.on_report = on_report  # called with (percent, role, LoadReport) for the step plots
        self.rounds = 0

    def observe(self, percent: int, seconds: float) -> Observation:
        from tasks.loadtest import run_load_test

        spec = self.spec
        stable = read_record(spec.storage.uri, spec.name, "stable")
        cand = read_record(spec.storage.uri, spec.name, "candidate")
        self.rounds += 1
        if spec.canary.analysis == "sequential" or stable is None:
            return self._sequential(stable, cand, percent, seconds)
        door = front_door(spec)
        profile = spec.load.model_copy(update={"duration_s": seconds, "num_requests": None})
        before = {"s": _read(stable), "c": _read(cand)}
        fig0 = fd.read_figures(door)
        report = run_load_test(door.url, spec.served_name, profile, None, self.tokenizer, keep_records=True)
        fig1 = fd.read_figures(door)
        after = {"s": _read(stable), "c": _read(cand)}
        took = report.duration or seconds
        sent = fig1.requests_since(fig0)
        total = sum(sent.values())
        share = 100 * sent.get(cand.slot, 0) / total if total else 0.0
        if self.on_report:  # each backend's share of the same window, as the front door named it per response
            for slot, role in ((stable.slot, "stable"), (cand.slot, "candidate")):
                if report.by_server and slot in report.by_server:
                    self.on_report(percent, role, report.by_server[slot])
        return Observation(
            candidate=ServerWindow.between(before["c"], after["c"], took),
            stable=ServerWindow.between(before["s"], after["s"], took),
            note=f"front door sent {share:.1f}% of {total} requests to the candidate (weight {percent}%)",
            traffic_share=share)

    def _sequential(self, stable, cand, percent: int, seconds: float) -> Observation:
        from tasks.loadtest import run_load_test

        spec = self.spec
        half = seconds / 2 if stable is not None else seconds
        profile = spec.load.model_copy(update={"duration_s": half, "num_requests": None})
        order = [("c", cand), ("s", stable)] if self.rounds % 2 else [("s", stable), ("c", cand)]
        door = front_door(spec) if stable is not None else None
        fig0 = fd.read_figures(door) if door else None
        windows = {}
        for role, rec in order:
            if rec is None:
                continue
            before = _read(rec)
            report = run_load_test(rec.base_url, spec.served_name, profile, None, self.tokenizer, keep_records=True)
            windows[role] = ServerWindow.between(before, _read(rec), report.duration or half)
            if self.on_report:
                self.on_report(None, "candidate" if role == "c" else "stable", report)
        note, share = "sequential analysis: each server loaded alone for half the step", None
        if door is not None:  # the synthetic load went around the door; what came through it is real clients'
            sent = fd.read_figures(door).requests_since(fig0)
            total = sum(sent.values())
            if total:
                share = 100 * sent.get(cand.slot, 0) / total
                note += f"; the front door sent {share:.1f}% of {total} client requests to the candidate (weight {percent}%)"
        return Observation(candidate=windows["c"], stable=windows.get("s"), note=note, traffic_share=share)


def machine_for(spec: PromotionSpec, record: CanaryRecord, tokenizer: str | None, on_step=None,
                on_report=None) -> CanaryMachine:
    return CanaryMachine(record, FrontDoorRouter(spec), LocalObserver(spec, tokenizer, on_report),
                         JudgeRules.from_spec(spec), Policy.from_spec(spec), save=lambda r: save_record(spec, r),
                         on_step=on_step)


def abort_record(spec: PromotionSpec, record: CanaryRecord, why: str, decided_by: str) -> CanaryRecord:
    return machine_for(spec, record, None).abort(why, decided_by)


def current_record(spec: PromotionSpec) -> CanaryRecord | None:
    return load_record(spec)
