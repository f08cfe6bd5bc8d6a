"""The load-test engine: drive an OpenAI-compatible server and measure it.

Design for one core at hundreds of streams:
- request bytes are built before the clock starts;
- the client is a raw asyncio protocol (client.Conn); a finished request hands its
  connection the next one from the completion callback, without a task switch;
- each chunk costs a timestamp, two list appends and a look at the HTTP framing;
- SSE parsing, JSON, token counting and statistics run after the load phase, and, when
  several load tests share an event loop (the canary drives stable and candidate together),
  only once none of them is still sending load, so one run's bookkeeping never delays
  another's timestamps.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
import weakref
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from tasks.errors import BadInput

from . import client
from .client import Conn, Req, Target
from .config import SLO, LoadProfile
from .data import Prompt, Tokenizer, prepare_prompts, request_body
from .metrics import RequestResult, aggregate, parse_response
from .report import LoadReport, RequestRecord, SweepPoint, evaluate_slo

_now = time.perf_counter
# Finished requests kept as raw bytes before they are parsed during the run (memory bound).
_MAX_RAW_BACKLOG = 50_000


# ------------------------------------------------------------------ shared-loop coordination
class _LoopState:
    def __init__(self) -> None:
        self.loading = 0
        self.quiet = asyncio.Event()
        self.quiet.set()
        self.progress = None  # shared rich Progress
        self.progress_users = 0


_loop_states: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState]" = weakref.WeakKeyDictionary()


def _state() -> _LoopState:
    loop = asyncio.get_running_loop()
    st = _loop_states.get(loop)
    if st is None:
        st = _loop_states[loop] = _LoopState()
    return st


class _LoadPhase:
    """Marks this run as sending load; `await wait_quiet()` returns once no run in the loop is."""

    def __enter__(self):
        st = _state()
        st.loading += 1
        st.quiet.clear()
        self.st = st
        return self

    def __exit__(self, *exc):
        self.st.loading -= 1
        if self.st.loading == 0:
            self.st.quiet.set()


async def _wait_quiet() -> None:
    await _state().quiet.wait()


# ------------------------------------------------------------------ progress bar
class _Progress:
    """One rich progress bar per run, all on one shared live display per event loop."""

    def __init__(self, enabled: bool, label: str, total: float | None, by_time: bool):
        self.task = None
        self.by_time = by_time
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        st = _state()
        if st.progress is None:
            st.progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn() if not by_time else TextColumn(""),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), transient=False, refresh_per_second=4,
            )
            st.progress.start()
        st.progress_users += 1
        self.st = st
        self.task = st.progress.add_task(label, total=total, info="")

    def update(self, done: int, failed: int, elapsed: float) -> None:
        if self.task is None:
            return
        rate = done / elapsed if elapsed > 0 else 0.0
        info = f"{done} done, {failed} failed, {rate:.1f} req/s"
        self.st.progress.update(self.task, completed=elapsed if self.by_time else done, info=info)

    def close(self) -> None:
        if self.task is None:
            return
        self.st.progress_users -= 1
        if self.st.progress_users == 0:
            self.st.progress.stop()
            self.st.progress = None
        self.task = None


# ------------------------------------------------------------------ one load phase
@dataclass
class _Prepared:
    base_url: str
    target: Target
    model: str
    chat: bool
    prompts: list[Prompt]
    payloads: list[bytes]
    tok: Tokenizer | None
    tokenizer_id: str | None
    headers: dict[str, str] | None


def _arrivals(profile: LoadProfile, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Send offsets (s from the start) for constant-rate or gamma (Poisson when burstiness=1) arrivals."""
    if profile.num_requests is not None:
        n = profile.num_requests
    else:
        n = int(math.ceil(rate * profile.duration_s * 1.2)) + 16
    if profile.mode == "rate":
        offs = np.arange(n, dtype=float) / rate
    else:
        gaps = rng.gamma(shape=profile.burstiness, scale=1.0 / (rate * profile.burstiness), size=n)
        offs = np.cumsum(gaps) - gaps[0]
        if profile.num_requests is not None and offs[-1] > 0:
            # vllm rescales so the run spans n/rate exactly, steadying throughput across seeds
            offs *= (n / rate) / (offs[-1] + gaps[0])
    if profile.duration_s is not None:
        offs = offs[offs < profile.duration_s]
    return offs


class _Run:
    def __init__(self, prep: _Prepared, profile: LoadProfile, progress: bool, label: str):
        self.prep = prep
        self.p = profile
        self.loop = asyncio.get_running_loop()
        self.done: list[Req] = []
        self.results: list[RequestResult] = []  # parsed early when the raw backlog grows large
        self.conns: list[Conn] = []
        self.idle: list[Conn] = []
        self.queue: collections.deque[Req] = collections.deque()
        self.n_conns = 0
        self.in_flight = 0
        self.issued = 0
        self.failed_live = 0
        self.stopping = False
        self.dispatching = True
        self.pending_opens = 0
        self.finished: asyncio.Future = self.loop.create_future()
        self.limit = profile.num_requests if profile.num_requests is not None else 1 << 62
        self.t0 = 0.0
        self.t_stop: float | None = None
        self.t_last_issue = 0.0
        self.connect_error = ""
        by_time = profile.num_requests is None
        self.progress = _Progress(progress, label, profile.duration_s if by_time else profile.num_requests, by_time)

    # -- issuing
    def _new_req(self, t_sched: float) -> Req:
        i = self.issued
        self.issued += 1
        return Req(i, i % len(self.prep.payloads), t_sched)

    def _send(self, conn: Conn, req: Req) -> None:
        self.in_flight += 1
        conn.send(req, self.prep.payloads[req.prompt])
        self.t_last_issue = req.t_start

    def _can_issue(self) -> bool:
        return not self.stopping and self.issued < self.limit

    async def _open(self) -> Conn | None:
        try:
            conn = await client.open_conn(self.prep.target, self._on_done, min(30.0, self.p.request_timeout_s))
        except (OSError, asyncio.TimeoutError) as e:
            self.connect_error = str(e) or type(e).__name__
            return None
        self.conns.append(conn)
        return conn

    def _spawn_open(self, req: Req | None) -> None:
        """Open a connection in the background and send `req` (or, in concurrency mode, the next one)."""
        self.pending_opens += 1  # counted now, so the run cannot look finished before the task starts
        self.loop.create_task(self._open_and_send(req))

    async def _open_and_send(self, req: Req | None) -> None:
        concurrency = self.p.mode == "concurrency"
        try:
            conn = None if self.finished.done() else await self._open()
            if conn is None and not self.finished.done():
                if req is None and self._can_issue():
                    req = self._new_req(_now())
                if req is not None:
                    req.t_start = req.t_done = _now()
                    req.error = "cannot connect"
                    req.error_detail = self.connect_error
                    self.done.append(req)
                    self.failed_live += 1
                if concurrency:
                    if self._can_issue():
                        await asyncio.sleep(0.05)  # don't spin on a refusing server
                        self._spawn_open(None)
                else:
                    self.n_conns -= 1
                    if self.queue:
                        self.n_conns += 1
                        self._spawn_open(self.queue.popleft())
            elif conn is not None:
                if req is None and self._can_issue():
                    req = self._new_req(_now())
                if req is None or self.finished.done():
                    conn.close()
                else:
                    self._send(conn, req)
        finally:
            self.pending_opens -= 1
            self._check_finished()

    # -- completion callback: the hot path's only bookkeeping
    def _on_done(self, conn: Conn, req: Req) -> None:
        self.in_flight -= 1
        if req.error == "connection closed before the response" and conn.used and not req.retried and not self.stopping:
            # A keep-alive connection the server closed while idle: retry once on a new one.
            req.retried = True
            req.error = None
            req.error_detail = ""
            req.times.clear()
            req.pieces.clear()
            self._spawn_open(req)
            return
        self.done.append(req)
        if req.error is not None or req.status != 200:
            self.failed_live += 1
        if self.p.mode == "concurrency":
            if self._can_issue():
                if conn.alive:
                    self._send(conn, self._new_req(_now()))
                else:
                    self._spawn_open(None)
        elif conn.alive:
            if self.queue:
                self._send(conn, self.queue.popleft())
            else:
                self.idle.append(conn)
        elif self.queue:
            self._spawn_open(self.queue.popleft())
        else:
            self.n_conns -= 1
        self._check_finished()

    def _check_finished(self) -> None:
        if self.finished.done():
            return
        more = self._can_issue() if self.p.mode == "concurrency" else (self.dispatching or bool(self.queue))
        if self.in_flight == 0 and self.pending_opens == 0 and not more:
            self.finished.set_result(None)

    def _stop(self) -> None:
        self.stopping = True
        self.t_stop = _now()
        self.queue.clear()  # due but never sent: the run is over
        self._check_finished()

    # -- rate modes
    async def _dispatch(self, offsets: np.ndarray) -> None:
        cap = self.p.concurrency
        t0 = self.t0
        sleep = asyncio.sleep
        for off in offsets.tolist():
            due = t0 + off
            delay = due - _now()
            if delay > 0.0005:
                await sleep(delay)
            if not self._can_issue():
                break
            req = self._new_req(due)
            while self.idle and not self.idle[-1].alive:
                self.idle.pop()
                self.n_conns -= 1
            if self.idle:
                self._send(self.idle.pop(), req)
            elif self.n_conns < cap:
                self.n_conns += 1
                self._spawn_open(req)
            else:
                self.queue.append(req)
        self.dispatching = False
        if self.t_stop is None and self.p.num_requests is not None:
            self.t_stop = _now()
        self._check_finished()

    # -- watchdog, progress, and parsing when the backlog grows
    async def _ticker(self) -> None:
        timeout = self.p.request_timeout_s
        interval = min(0.25, timeout / 4)
        while not self.finished.done():
            await asyncio.sleep(interval)
            now = _now()
            if len(self.conns) > 2 * self.p.concurrency:
                self.conns = [c for c in self.conns if c.alive]
            for conn in self.conns:
                req = conn.req
                if req is not None and now - req.t_start > timeout:
                    req = conn.abort_request(f"timeout after {timeout:g} s")
                    if req is not None:
                        self._on_done(conn, req)
            self.progress.update(len(self.done) - self.failed_live, self.failed_live, now - self.t0)
            if len(self.done) - len(self.results) > _MAX_RAW_BACKLOG:
                self._parse_some(len(self.done) - len(self.results) - _MAX_RAW_BACKLOG // 2)

    def _parse_some(self, n: int) -> None:
        start = len(self.results)
        for req in self.done[start : start + n]:
            self.results.append(self._result(req))
            req.pieces = []  # free the bytes
            req.times = []

    def _result(self, req: Req) -> RequestResult:
        return _result(req, self.t0, self.prep, self._need_text)

    async def execute(self) -> None:
        p = self.p
        self._need_text = self.prep.tok is not None
        if p.mode == "concurrency":
            n0 = p.concurrency if p.num_requests is None else min(p.concurrency, p.num_requests)
            opened = await asyncio.gather(*(self._open() for _ in range(n0)))
            first = [c for c in opened if c is not None]
            if not first:
                raise _connect_error(self.prep.base_url, self.connect_error)
        else:
            rate = p.rate
            offsets = _arrivals(p, rate, np.random.default_rng(p.seed))
            # a few warm connections so the first arrivals don't pay for the handshake
            n0 = min(p.concurrency, max(1, int(math.ceil(rate * 0.05))), 64, len(offsets))
            opened = await asyncio.gather(*(self._open() for _ in range(n0)))
            first = [c for c in opened if c is not None]
            if not first:
                raise _connect_error(self.prep.base_url, self.connect_error)
            self.idle.extend(first)
            self.n_conns = len(first)
        ticker = None
        with _LoadPhase():
            self.t0 = _now()
            self.cpu0 = time.process_time()
            stop_handle = None
            if p.duration_s is not None:
                stop_handle = self.loop.call_later(p.duration_s, self._stop)
            ticker = self.loop.create_task(self._ticker())
            if p.mode == "concurrency":
                self.dispatching = False
                for conn in first:
                    if self._can_issue():
                        self._send(conn, self._new_req(_now()))
                    else:
                        conn.close()
                self._check_finished()
            else:
                self.loop.create_task(self._dispatch(offsets))
            try:
                await self.finished
            finally:
                self.t_finish = _now()
                self.cpu = time.process_time() - self.cpu0
                if stop_handle is not None:
                    stop_handle.cancel()
                ticker.cancel()
                for c in self.conns:
                    c.close()
                self.progress.update(len(self.done) - self.failed_live, self.failed_live, self.t_finish - self.t0)
                self.progress.close()
        if self.t_stop is None:
            self.t_stop = self.t_last_issue


def _connect_error(base_url: str, detail: str):
    from tasks.errors import StageFailed

    return StageFailed("load_test", base_url, f"cannot connect: {detail}",
                       hint="start the server (or wait until it is up) and check the URL's host and port")


def _result(req: Req, t0: float, prep: _Prepared, need_text: bool) -> RequestResult:
    r = RequestResult(idx=req.idx, start=req.t_start - t0, queued=max(0.0, req.t_start - req.t_sched), server=req.server)
    prompt = prep.prompts[req.prompt]
    r.input_tokens = prompt.input_tokens
    if req.error is not None:
        r.error = req.error
        r.detail = req.error_detail
        return r
    parsed = parse_response(req.pieces, req.times, prep.chat, need_text)
    if parsed.error is not None:
        r.error = parsed.error
        r.detail = parsed.detail
        return r
    tt = parsed.token_times
    r.ttft = tt[0] - req.t_start
    r.latency = tt[-1] - req.t_start
    r.itls = [b - a for a, b in zip(tt, tt[1:])]
    if parsed.prompt_tokens is not None:
        r.input_tokens = parsed.prompt_tokens
    if parsed.completion_tokens is not None:
        r.output_tokens = parsed.completion_tokens
        r.output_src = "usage"
    elif prep.tok is not None:
        r.output_tokens = prep.tok.count(parsed.text)
        r.output_src = "tokenizer"
    else:
        r.output_tokens = len(tt)
        r.output_src = "chunks"
    r.input_src = "usage" if parsed.prompt_tokens is not None else ("tokenizer" if prompt.exact else "estimate")
    return r


# ------------------------------------------------------------------ building the report
async def _analyse(run: _Run) -> list[RequestResult]:
    """Parse every response; yields to the loop now and then so other runs stay responsive."""
    results = run.results
    start = len(results)
    t_slice = _now()
    for req in run.done[start:]:
        results.append(run._result(req))
        if _now() - t_slice > 0.005:
            await asyncio.sleep(0)
            t_slice = _now()
    return results


def _report(run: _Run, results: list[RequestResult], slo: SLO | None, keep_records: bool, label: str | None) -> LoadReport:
    p = run.p
    prep = run.prep
    t0 = run.t0
    windowed = p.warmup_s > 0 or p.cooldown_s > 0
    if windowed:
        w0 = p.warmup_s
        end = (run.t_stop if run.t_stop is not None else run.t_finish) - t0
        w1 = end - p.cooldown_s
        # rate modes: the window is about when requests were due, not when a queue let them out
        kept = [r for r in results if w0 <= (r.start - r.queued) <= w1]
        ends = [r.start + (r.latency if r.ok else 0.0) for r in kept]
        duration = (max(ends) - w0) if ends else 0.0
    else:
        kept = results
        duration = run.t_finish - t0
    ok = [r for r in kept if r.ok]
    limits = (slo.ttft_p99_ms, slo.tpot_p99_ms, slo.e2e_p99_ms) if slo else (None, None, None)
    agg = aggregate(kept, duration, limits)
    errors: dict[str, int] = {}
    examples: dict[str, str] = {}
    for r in kept:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
            if r.error not in examples and r.detail:
                examples[r.error] = r.detail[:300]
    out_src = collections.Counter(r.output_src for r in ok)
    in_src = collections.Counter(r.input_src for r in ok)
    total = len(kept)
    rep = LoadReport(
        date=datetime.now().strftime("%Y%m%d-%H%M%S"),
        backend="openai-chat" if prep.chat else "openai",
        endpoint_type="openai-chat" if prep.chat else "openai",
        label=label,
        model_id=prep.model,
        tokenizer_id=prep.tokenizer_id,
        num_prompts=total,
        request_rate=p.rate if p.mode in ("rate", "poisson") and p.rate else "inf",
        burstiness=p.burstiness,
        max_concurrency=p.concurrency,
        base_url=prep.base_url,
        mode=p.mode,
        error_rate=(agg["failed"] / total) if total else 0.0,
        excluded_requests=len(results) - len(kept),
        input_tokens_source=in_src.most_common(1)[0][0] if in_src else "estimate",
        output_tokens_source=out_src.most_common(1)[0][0] if out_src else "usage",
        generator_cpu_s=run.cpu,
        errors=errors,
        error_examples=examples,
        slo=slo,
        profile=p,
        **agg,
    )
    if keep_records:
        rep.records = [
            RequestRecord(
                start_s=r.start, queued_ms=r.queued * 1000,
                ttft_ms=r.ttft * 1000 if r.ok else None,
                tpot_ms=r.tpot * 1000 if r.ok and r.output_tokens > 1 else None,
                e2el_ms=r.latency * 1000 if r.ok else None,
                itl_ms=[x * 1000 for x in r.itls], input_tokens=r.input_tokens,
                output_tokens=r.output_tokens, error=r.error, detail=r.detail if not r.ok else "", server=r.server,
            )
            for r in kept
        ]
    rep.violations = evaluate_slo(rep, slo)
    rep.passed = not rep.violations
    return rep


async def _single(prep: _Prepared, profile: LoadProfile, slo: SLO | None, progress: bool, keep_records: bool,
                  label: str | None) -> LoadReport:
    run = _Run(prep, profile, progress, label or f"{prep.model} {profile.mode}")
    await run.execute()
    await _wait_quiet()
    results = await _analyse(run)
    rep = _report(run, results, slo, keep_records, label)
    servers = sorted({r.server for r in results if r.server})
    if len(servers) > 1:  # behind a front door: the same window, as each backend served it
        rep.by_server = {s: _report(run, [r for r in results if r.server == s], slo, keep_records, f"{label or ''} {s}")
                         for s in servers}
    return rep


# ------------------------------------------------------------------ sweep
def _point(label: str, rate: float | None, profile: LoadProfile, rep: LoadReport) -> SweepPoint:
    return SweepPoint(
        label=label, target_rate=rate, concurrency=profile.concurrency if label != "synchronous" else 1,
        completed=rep.completed, failed=rep.failed, request_throughput=rep.request_throughput,
        output_throughput=rep.output_throughput, median_ttft_ms=rep.median_ttft_ms, p99_ttft_ms=rep.p99_ttft_ms,
        median_tpot_ms=rep.median_tpot_ms, p99_tpot_ms=rep.p99_tpot_ms, median_itl_ms=rep.median_itl_ms,
        p99_e2el_ms=rep.p99_e2el_ms, passed=rep.passed, violations=rep.violations,
    )


def _level(pt: SweepPoint, rep: LoadReport) -> float:
    """A level's load: the target rate of a constant-rate run, the achieved rate of a concurrency run."""
    return pt.target_rate if pt.target_rate is not None else rep.request_throughput


def _edge(runs: list[tuple[SweepPoint, LoadReport]]) -> tuple[float | None, float | None]:
    """(highest level with every lower level passing, the first failing level above it)."""
    lo = None
    for pt, rep in sorted(runs, key=lambda x: _level(*x)):
        if not rep.passed:
            return lo, _level(pt, rep)
        lo = _level(pt, rep)
    return lo, None


async def _sweep(prep: _Prepared, profile: LoadProfile, slo: SLO | None, progress: bool, keep_records: bool,
                 label: str | None, single=None) -> LoadReport:
    """GuideLLM-style: synchronous, then max throughput, then constant rates in between; bisect the edge.

    `single` runs one load level (default `_single`; the V2 load test passes its own)."""
    single = single or _single
    runs: list[tuple[SweepPoint, LoadReport]] = []

    async def at(kind: str, rate: float | None, conc: int) -> LoadReport:
        upd = {"mode": "concurrency", "concurrency": conc} if rate is None else {"mode": "rate", "rate": rate}
        sub = profile.model_copy(update=upd)
        name = kind if rate is None else f"rate {rate:.2f}/s"
        rep = await single(prep, sub, slo, progress, keep_records, f"{label or prep.model} sweep: {name}")
        runs.append((_point(name, rate, sub, rep), rep))
        return rep

    sync = await at("synchronous", None, 1)
    thr = await at("throughput", None, profile.concurrency)
    r_lo, r_hi = sync.request_throughput, thr.request_throughput
    if r_hi > r_lo * 1.05:
        for r in np.linspace(r_lo, r_hi, profile.sweep_steps)[1:-1]:
            await at("rate", float(r), profile.concurrency)
        lo, hi = _edge(runs)
        for _ in range(profile.sweep_refine):
            if lo is None or hi is None or hi - lo < 0.02 * hi:
                break
            await at("rate", (lo + hi) / 2, profile.concurrency)
            lo, hi = _edge(runs)
    # Conservative: the highest load level below which every level met the SLO too.
    ok: list[LoadReport] = []
    for _, rep in sorted(runs, key=lambda x: _level(*x)):
        if not rep.passed:
            break
        ok.append(rep)
    best = ok[-1] if ok else sync
    best = best.model_copy(deep=True)
    best.mode = "sweep"
    best.sweep = [pt for pt, _ in runs]
    best.max_rate_meeting_slo = best.request_throughput if ok else None
    best.violations = list(best.violations) if ok else ["no load level met the SLO"] + [
        f"at {runs[0][0].label}: {v}" for v in runs[0][1].violations
    ]
    if ok and profile.rate is not None and best.request_throughput < profile.rate:
        best.violations.append(
            f"highest rate meeting the SLO {best.request_throughput:.2f} req/s < required {profile.rate:g} req/s"
        )
    best.passed = not best.violations
    best.profile = profile
    return best


# ------------------------------------------------------------------ public API
async def arun_load_test(
    base_url: str,
    model: str,
    profile: LoadProfile,
    slo: SLO | None = None,
    tokenizer: str | None = None,
    progress: bool = False,
    *,
    headers: dict[str, str] | None = None,
    keep_records: bool = True,
    label: str | None = None,
) -> LoadReport:
    """Run one load test against an OpenAI-compatible server; returns the report with the SLO verdict.

    `tokenizer` is a local model folder (tokenizer.json or HF tokenizer files) for exact prompt
    token counts; without it prompts are about one token a word and the server's usage decides.
    `headers` are added to every request (an API key, a Host header for an ingress).
    Several calls may run at once in one event loop.
    Raises StageFailed when the server cannot be reached, BadInput for a bad URL or dataset.
    """
    if profile.endpoint == "v2":  # the Open Inference Protocol (predictive models): tasks/loadtest/v2.py
        from .v2 import arun_v2_load_test

        return await arun_v2_load_test(base_url, model, profile, slo, progress, headers=headers,
                                       keep_records=keep_records, label=label)
    target = client.parse_target(base_url)
    if not model:
        raise BadInput("load_test", base_url, "no model name", hint="pass the served model name (see /v1/models)")
    await client.check_reachable(target, base_url)
    if profile.num_requests is not None:
        expected = profile.num_requests
    elif profile.mode in ("rate", "poisson") and profile.rate:
        expected = int(profile.rate * (profile.duration_s or 0) * 1.2) + 16
    else:
        expected = int(profile.concurrency * (profile.duration_s or 0) * 20) + 16
    prompts, tok = prepare_prompts(profile, tokenizer, expected)
    chat = profile.endpoint == "chat"
    path = target.path("chat/completions" if chat else "completions")
    payloads = [
        client.build_request(target, path, request_body(model, pr, chat, profile.ignore_eos), headers) for pr in prompts
    ]
    prep = _Prepared(base_url, target, model, chat, prompts, payloads, tok, tokenizer, headers)
    if profile.mode == "sweep":
        return await _sweep(prep, profile, slo, progress, keep_records, label)
    return await _single(prep, profile, slo, progress, keep_records, label)


def run_load_test(
    base_url: str,
    model: str,
    profile: LoadProfile,
    slo: SLO | None = None,
    tokenizer: str | None = None,
    progress: bool = False,
    **kwargs,
) -> LoadReport:
    """Synchronous `arun_load_test`, on uvloop when it is installed.

    Inside a running event loop (a notebook, an async Prefect task) it runs on its own thread.
    """
    coro_args = (base_url, model, profile, slo, tokenizer, progress)

    def _run():
        factory = None
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(arun_load_test(*coro_args, **kwargs))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run()
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(_run).result()


async def discover_model(base_url: str, headers: dict[str, str] | None = None) -> str:
    """The first model the server lists at /v1/models."""
    target = client.parse_target(base_url)
    await client.check_reachable(target, base_url)
    status, body = await client.get_json(target, target.path("models"), headers)
    try:
        return body["data"][0]["id"]
    except (TypeError, KeyError, IndexError):
        raise BadInput(
            "load_test", base_url, f"cannot read the served model from /v1/models (HTTP {status})",
            hint="pass the model name with --model",
        ) from None
