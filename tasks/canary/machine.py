"""The canary: one phase machine for every target, in the manner of Flagger.

The phase is stored with the target in a record (step, failed checks, each step's figures
and verdict, who decided). `advance` makes one transition and saves the record before it
returns, so a run killed at any point resumes on the next run from what was saved: the
failure budget is never reset and a finished promotion is never repeated.

    Initializing --> Progressing(step i) --> ... --> Promoting --> Succeeded
         |               |   ^  (pass: i+1; fail within budget, or too little traffic: same step)
         |               v   |
         +----------> RollingBack --> RolledBack
                         ^
                  Paused (on_inconclusive: pause; the next run resumes at step i)

The machine drives a Router (how traffic moves: the local front door, KServe Knative,
KServe Standard where it splits, LLMInferenceService, blue-green) and an Observer (what
each server did over a window). It never knows which ones. It is the one owner of
rollback: the flow asks it to abort, it does not roll back by itself.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from enum import Enum
from typing import Callable, Protocol

from pydantic import BaseModel, Field

from tasks.canary.figures import ServerWindow
from tasks.canary.judge import Check, JudgeRules, Verdict, has_enough_traffic, judge_step
from tasks.failpoints import crash_point

log = logging.getLogger("llmship.canary")


class Phase(str, Enum):
    INITIALIZING = "Initializing"  # candidate deployed; warm-up and load test before any traffic
    PROGRESSING = "Progressing"  # at step_index, analysing
    PAUSED = "Paused"  # held at step_index until the next run (on_inconclusive: pause)
    PROMOTING = "Promoting"  # every step passed: candidate to 100%, recorded stable, old one drained
    SUCCEEDED = "Succeeded"
    ROLLING_BACK = "RollingBack"  # stable to 100%, candidate removed
    ROLLED_BACK = "RolledBack"


TERMINAL = (Phase.SUCCEEDED, Phase.ROLLED_BACK)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StepRecord(BaseModel):
    index: int
    percent: int
    attempt: int  # 0 for the first window at this step
    started_at: str
    verdict: Verdict
    reason: str
    checks: list[Check] = Field(default_factory=list)
    candidate: dict[str, float] = Field(default_factory=dict)
    stable: dict[str, float] = Field(default_factory=dict)
    stable_window: ServerWindow | None = None  # kept: a later step may compare against it
    traffic_share: float | None = None  # percent of the step's requests the router sent to the candidate
    note: str = ""


class Transition(BaseModel):
    at: str
    to: Phase
    why: str


class CanaryRecord(BaseModel):
    """Everything the canary knows, persisted with the target after every transition."""

    target: str  # local:<name>, kserve:<namespace>:<name>
    candidate_revision: str  # serving revision digest of the candidate
    stable_revision: str | None = None
    handle: dict = Field(default_factory=dict)  # the router's own facts about both servers
    plan: list[int]  # traffic percents of the steps, as the router runs them
    phase: Phase = Phase.INITIALIZING
    step_index: int = 0
    attempt: int = 0
    extensions: int = 0
    failed_checks: int = 0
    failure_limit: int = 0
    steps: list[StepRecord] = Field(default_factory=list)
    pre_rollout: dict[str, str] = Field(default_factory=dict)  # warm_up / load_test -> "passed"
    reason: str = ""
    decided_by: str = ""
    transitions: list[Transition] = Field(default_factory=list)
    started_at: str = Field(default_factory=now_iso)
    updated_at: str = Field(default_factory=now_iso)

    @property
    def done(self) -> bool:
        return self.phase in TERMINAL

    @property
    def passed_every_step(self) -> bool:
        return self.failed_checks == 0 and bool(self.steps) and all(s.verdict == Verdict.PASS for s in self.steps)

    def baseline(self, rules: JudgeRules) -> tuple[ServerWindow | None, str]:
        """Stable's last window with enough traffic, for steps where it has too little (99% or 100%).

        A window with a request or two must not stand in: the judge would skip the comparison,
        and a retried last step would pass on the SLO limits alone."""
        for s in reversed(self.steps):
            if has_enough_traffic(s.stable_window, rules):
                return s.stable_window, f"stable at step {s.index + 1} ({s.percent}%)"
        return None, ""


class Health(BaseModel):
    candidate_ok: bool
    stable_ok: bool | None  # None: there is no stable
    detail: str = ""


class Router(Protocol):
    """How traffic moves between stable and candidate on one kind of target."""

    kind: str

    def set_weight(self, percent: int) -> None:
        """Send `percent` of traffic to the candidate and the rest to stable; return once in effect."""

    def promote(self) -> None:
        """Candidate at 100% and recorded as stable; the old stable drained and removed. Idempotent."""

    def rollback(self) -> None:
        """Stable at 100% (started again from its artifact if it died), candidate removed. Idempotent."""

    def health(self) -> Health:
        """Whether each server is alive, as the target sees it."""


class Observation(BaseModel):
    candidate: ServerWindow
    stable: ServerWindow | None = None
    extra: list[Check] = Field(default_factory=list)  # target-specific gates (PromQL on KServe)
    traffic_share: float | None = None  # percent of requests the candidate got, as the router counted them
    note: str = ""


class Observer(Protocol):
    def observe(self, percent: int, seconds: float) -> Observation:
        """What each server did over one window of `seconds` at this traffic split."""


class Policy(BaseModel):
    step_seconds: float
    on_inconclusive: str = "extend"  # extend | rollback | pause
    max_extensions: int = 2

    @classmethod
    def from_spec(cls, spec) -> "Policy":
        c = spec.canary
        return cls(step_seconds=c.step_duration_s, on_inconclusive=c.on_inconclusive, max_extensions=c.max_extensions)


class CanaryMachine:
    def __init__(self, record: CanaryRecord, router: Router, observer: Observer, rules: JudgeRules, policy: Policy,
                 save: Callable[[CanaryRecord], None], on_step: Callable[[StepRecord], None] | None = None):
        self.record = record
        self.router = router
        self.observer = observer
        self.rules = rules
        self.policy = policy
        self._save = save
        self._on_step = on_step

    # -- bookkeeping -------------------------------------------------------------------

    def _move(self, phase: Phase, why: str, decided_by: str | None = None) -> None:
        r = self.record
        r.transitions.append(Transition(at=now_iso(), to=phase, why=why))
        r.phase = phase
        if decided_by is not None:
            r.reason, r.decided_by = why, decided_by
        log.info("canary %s: %s (%s)", r.target, phase.value, why)
        self.save()

    def save(self) -> None:
        self.record.updated_at = now_iso()
        self._save(self.record)

    # -- the step function -------------------------------------------------------------

    def advance(self) -> Phase:
        """One transition from the current phase; the record is saved before this returns."""
        r = self.record
        if r.phase == Phase.INITIALIZING:
            if r.plan:
                self._move(Phase.PROGRESSING, f"step 1 of {len(r.plan)} at {r.plan[0]}%")
            else:
                self._move(Phase.PROMOTING, "no stable to compare with: the candidate passed its load test",
                           decided_by="load test")
        elif r.phase == Phase.PAUSED:
            self._move(Phase.PROGRESSING, f"resumed at step {r.step_index + 1} ({r.plan[r.step_index]}%)")
        elif r.phase == Phase.PROGRESSING:
            self._progress()
        elif r.phase == Phase.PROMOTING:
            self.router.promote()
            self._move(Phase.SUCCEEDED, r.reason or "promoted")
        elif r.phase == Phase.ROLLING_BACK:
            self.router.rollback()
            self._move(Phase.ROLLED_BACK, r.reason or "rolled back")
        return r.phase

    def _progress(self) -> None:
        r = self.record
        percent = r.plan[r.step_index]
        health = self.router.health()
        if not self._healthy(health):
            return
        self.router.set_weight(percent)
        crash_point(f"canary-step-{r.step_index + 1}")
        started = now_iso()
        obs = self.observer.observe(percent, self.policy.step_seconds)
        baseline, label = r.baseline(self.rules)
        j = judge_step(obs.candidate, obs.stable, self.rules, baseline, label, obs.extra)
        step = StepRecord(index=r.step_index, percent=percent, attempt=r.attempt, started_at=started, verdict=j.verdict,
                          reason=j.reason, checks=j.checks, candidate=obs.candidate.figures(),
                          stable=obs.stable.figures() if obs.stable else {}, stable_window=obs.stable, traffic_share=obs.traffic_share, note=obs.note)
        r.steps.append(step)
        if self._on_step:
            self._on_step(step)
        where = f"step {r.step_index + 1} ({percent}%)"
        if j.verdict == Verdict.PASS:
            r.attempt = r.extensions = 0
            if r.step_index + 1 < len(r.plan):
                r.step_index += 1
                self._move(Phase.PROGRESSING, f"{where} passed; step {r.step_index + 1} at {r.plan[r.step_index]}%")
            else:
                self._move(Phase.PROMOTING, f"all {len(r.plan)} step(s) passed", decided_by="judge")
        elif j.verdict == Verdict.FAIL:
            r.failed_checks += 1  # one failed window, however many gates it broke (Flagger counts the same way)
            r.attempt += 1
            if r.failed_checks > r.failure_limit:
                self._move(Phase.ROLLING_BACK, f"{where}: {j.reason}; {r.failed_checks} failed check(s) > "
                           f"failure_limit {r.failure_limit}", decided_by="judge")
            else:
                self._move(Phase.PROGRESSING, f"{where}: {j.reason}; {r.failed_checks} failed check(s) of "
                           f"{r.failure_limit} tolerated: analysing the step again")
        else:
            self._inconclusive(where, j.reason)

    def _inconclusive(self, where: str, reason: str) -> None:
        r, p = self.record, self.policy
        r.attempt += 1
        if p.on_inconclusive == "pause":
            self._move(Phase.PAUSED, f"{where} inconclusive: {reason}; paused (on_inconclusive: pause): "
                       "re-run the promotion to resume, or roll it back", decided_by="judge")
        elif p.on_inconclusive == "extend" and r.extensions < p.max_extensions:
            r.extensions += 1
            self._move(Phase.PROGRESSING, f"{where} inconclusive: {reason}; extending the step "
                       f"({r.extensions} of {p.max_extensions})")
        else:
            tail = f" after {r.extensions} extension(s)" if p.on_inconclusive == "extend" else ""
            self._move(Phase.ROLLING_BACK, f"{where} inconclusive{tail}: {reason}", decided_by="judge")

    def _healthy(self, h: Health) -> bool:
        """A dead server decides the step: the promise is one of two known states."""
        r = self.record
        if not h.candidate_ok:
            self._move(Phase.ROLLING_BACK, f"the candidate stopped serving: {h.detail}", decided_by="health check")
            return False
        if h.stable_ok is False:
            # The candidate is up. It becomes stable only if it has passed every step so far;
            # otherwise the rollback starts stable again from its artifact.
            if r.passed_every_step:
                self._move(Phase.PROMOTING, f"stable stopped serving ({h.detail}); the candidate had passed every "
                           f"step so far ({len(r.steps)}), so it is promoted", decided_by="health check")
            else:
                self._move(Phase.ROLLING_BACK, f"stable stopped serving ({h.detail}) before the candidate had "
                           "passed a step cleanly; stable is restored from its artifact", decided_by="health check")
            return False
        return True

    # -- driving it --------------------------------------------------------------------

    def run(self) -> CanaryRecord:
        """Advance until Succeeded, RolledBack or Paused."""
        while not self.record.done:
            if self.advance() == Phase.PAUSED:
                break
        return self.record

    def abort(self, why: str, decided_by: str) -> CanaryRecord:
        """Roll back from wherever the canary is (a failed warm-up, an error, an interrupt)."""
        r = self.record
        if r.done:
            return r
        if r.phase != Phase.ROLLING_BACK:
            self._move(Phase.ROLLING_BACK, why, decided_by=decided_by)
        return self.run()
