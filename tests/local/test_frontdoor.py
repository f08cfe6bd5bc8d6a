"""The local front door: real HAProxy in front of real streaming HTTP servers, on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tasks.errors import EXIT_BAD_INPUT, BadInput, StageFailed
from tasks.local import frontdoor as F
from tests.local.conftest import FAST
from tests.local.helpers import ROOT, LoadClient, stream

pytestmark = pytest.mark.servers


def _door(store, port, settings=FAST, name="tiny"):
    return F.ensure_frontdoor(store, name, "127.0.0.1", port, settings=settings)


def test_url_never_changes_while_backends_are_swapped(store, port, backends):
    fd = _door(store, port)
    url = fd.url
    assert url == f"http://127.0.0.1:{port}"
    served = []
    with httpx.Client(timeout=10) as c:
        first = backends("v1")
        F.put_server(fd, "127.0.0.1", first.port, weight=100)
        served.append(stream(c, url).model)
        old = "a"
        for model in ("v2", "v3", "v4"):  # three promotions: slots alternate a -> b -> a -> b
            b = backends(model)
            new = F.put_server(fd, "127.0.0.1", b.port).name
            assert new != old
            F.set_traffic(fd, old, new, 100)
            assert F.drain_slot(fd, old, timeout_s=5).drained
            answers = [stream(c, url) for _ in range(5)]
            assert {a.model for a in answers} == {model}
            assert {a.slot for a in answers} == {new}
            served.append(model)
            old = new
    assert served == ["v1", "v2", "v3", "v4"]
    assert F.load_frontdoor(store, "tiny").url == url
    assert F.describe(store, "tiny").url == url


def test_streamed_tokens_pass_through_one_by_one(store, port, backends):
    """Each SSE chunk leaves HAProxy when it arrives (option http-no-delay): without it, HAProxy
    held chunks back and a 50 ms TTFT read as ~125 ms, with the tokens arriving merged."""
    b = backends("one", ttft_ms=40, itl_ms=40)
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", b.port, weight=100)
    with httpx.Client(timeout=10) as c:
        stream(c, fd.url)  # a warm connection, as under load
        direct = [stream(c, b.url, max_tokens=6) for _ in range(3)]
        door = [stream(c, fd.url, max_tokens=6) for _ in range(3)]
    for a in direct + door:
        assert a.ok and a.tokens == 6
    gaps = sorted(t1 - t0 for a in door for t0, t1 in zip(a.times, a.times[1:]))
    assert gaps[len(gaps) // 2] > 0.02, gaps  # tokens arrive one by one (held back, they arrive merged: gap 0)
    first_door = sorted(a.t_first for a in door)[1]
    first_direct = sorted(a.t_first for a in direct)[1]
    assert first_door - first_direct < 0.03, (first_door, first_direct)


@pytest.mark.parametrize("percent", [25, 50])
def test_weights_split_traffic_on_backends_and_in_haproxy(store, port, backends, percent):
    stable, cand = backends("stable"), backends("cand")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", stable.port, weight=100)
    F.put_server(fd, "127.0.0.1", cand.port)
    F.set_traffic(fd, "a", "b", percent)
    before = F.read_figures(fd)
    s0, c0 = stable.requests(), cand.requests()
    n = 400
    with httpx.Client(timeout=10) as c:
        answers = [stream(c, fd.url) for _ in range(n)]
    assert all(a.ok for a in answers)
    after = F.read_figures(fd)
    on_backends = {"a": stable.requests() - s0, "b": cand.requests() - c0}
    in_haproxy = after.requests_since(before)
    assert on_backends == in_haproxy  # HAProxy counts what the servers saw
    assert sum(on_backends.values()) == n
    assert abs(on_backends["b"] / n - percent / 100) <= 0.03
    assert abs(after.split(before)["b"] - percent / 100) <= 0.03
    assert after.slots["a"].weight == 100 - percent and after.slots["b"].weight == percent
    assert after.slots["b"].responses["2xx"] - before.slots["b"].responses["2xx"] == on_backends["b"]
    assert sum(1 for a in answers if a.slot == "b") == on_backends["b"]  # the response header says who served


def test_drain_lets_a_long_stream_finish_while_new_requests_go_to_the_other_slot(store, port, backends):
    slow = backends("old", itl_ms=50)  # 40 tokens: a 2 s stream
    fast = backends("new")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", slow.port, weight=100)
    F.put_server(fd, "127.0.0.1", fast.port)
    long: dict = {}

    def long_request():
        with httpx.Client(timeout=30) as c:
            long["answer"] = stream(c, fd.url, max_tokens=40)

    t = threading.Thread(target=long_request)
    t.start()
    deadline = time.monotonic() + 5
    while F.read_figures(fd).slots["a"].current_sessions == 0:
        assert time.monotonic() < deadline, "the long stream never reached slot a"
        time.sleep(0.01)
    F.set_traffic(fd, "a", "b", 100)
    result: dict = {}
    drainer = threading.Thread(target=lambda: result.update(r=F.drain_slot(fd, "a", timeout_s=20)))
    t_drain = time.monotonic()
    drainer.start()
    with httpx.Client(timeout=10) as c:
        during = [stream(c, fd.url) for _ in range(20)]  # while a drains
    assert {a.slot for a in during} == {"b"} and all(a.ok for a in during)
    assert F.read_figures(fd).slots["a"].status in ("DRAIN", "MAINT")
    t.join(30)
    drainer.join(30)
    ans, r = long["answer"], result["r"]
    assert ans.ok and ans.tokens == 40 and ans.slot == "a" and ans.model == "old"
    # streamed through unbuffered: the first token long before the end
    assert ans.t_first is not None and ans.t_first < 0.5 < ans.t_end
    assert r.drained and not r.forced and r.sessions_left == 0
    assert r.waited_s > 0.5 and time.monotonic() - t_drain < 10
    assert F.load_frontdoor(store, "tiny").slot("a").server is None
    assert F.read_figures(fd).slots["a"].status == "MAINT"


def test_drain_timeout_cuts_or_leaves_what_still_runs(store, port, backends):
    slow, fast = backends("old", itl_ms=100), backends("new")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", slow.port, weight=100)
    F.put_server(fd, "127.0.0.1", fast.port, weight=100)
    F.set_weights(fd, {"b": 100, "a": 0})
    seen: dict = {}

    def long_request():
        try:
            seen["answer"] = stream(c, fd.url, max_tokens=60)
        except httpx.HTTPError as err:
            seen["error"] = err

    with httpx.Client(timeout=30) as c:
        F.set_weights(fd, {"a": 100, "b": 0})
        t = threading.Thread(target=long_request)
        t.start()
        while F.read_figures(fd).slots["a"].current_sessions == 0:
            time.sleep(0.01)
        F.set_weights(fd, {"b": 100, "a": 0})
        kept = F.drain_slot(fd, "a", timeout_s=0.3, force=False)
        assert not kept.drained and kept.sessions_left == 1
        assert F.load_frontdoor(store, "tiny").slot("a").state == "drain"
        cut = F.drain_slot(fd, "a", timeout_s=0.2)
        assert cut.forced and not cut.drained and F.load_frontdoor(store, "tiny").slot("a").server is None
        t.join(10)
    assert isinstance(seen.get("error"), httpx.RemoteProtocolError)  # the stream that outlived the drain was cut


def test_a_dead_backend_is_marked_down_and_gets_no_traffic(store, port, backends):
    alive, dead = backends("alive"), backends("dead")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", alive.port, weight=100)
    F.put_server(fd, "127.0.0.1", dead.port, weight=100)
    dead.kill()
    with httpx.Client(timeout=10) as c:
        right_after = [stream(c, fd.url) for _ in range(10)]  # before the check notices: retried elsewhere
        deadline = time.monotonic() + 5
        while F.read_figures(fd).slots["b"].status != "DOWN":
            assert time.monotonic() < deadline, F.read_figures(fd).slots["b"]
            time.sleep(0.02)
        before = F.read_figures(fd)
        later = [stream(c, fd.url) for _ in range(50)]
    after = F.read_figures(fd)
    assert all(a.ok for a in right_after + later), [a for a in right_after + later if not a.ok]
    assert {a.model for a in later} == {"alive"}
    assert after.requests_since(before) == {"a": 50, "b": 0}
    fig = after.slots["b"]
    assert not fig.up and fig.check.startswith("L4CON")
    assert "DOWN" in " ".join(F.describe(store, "tiny").lines())


def test_a_slot_swap_under_continuous_load_fails_no_request(store, port, backends):
    old, new = backends("old"), backends("new")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", old.port, weight=100)
    with LoadClient(fd.url, threads=3) as load:
        load.wait_for(50)
        cand = F.put_server(fd, "127.0.0.1", new.port).name  # weight 0
        load.wait_for(50)
        F.set_traffic(fd, "a", cand, 25)
        before = F.read_figures(fd)
        load.wait_for(400)
        split = F.read_figures(fd).split(before)
        F.set_traffic(fd, "a", cand, 100)
        load.wait_for(50)
        assert F.drain_slot(fd, "a", timeout_s=10).drained
        old.stop()  # the old server stops only after its slot is out
        load.wait_for(100)
    assert not load.failures, load.failures[:5]
    assert abs(split[cand] - 0.25) <= 0.05, split
    tail = load.answers[-50:]
    assert {a.model for a in tail} == {"new"}
    assert len(load.answers) >= 650


def test_state_survives_a_new_process_and_haproxy_outlives_its_starter(store, port, backends):
    a, b = backends("one"), backends("two")
    code = f"""
import sys, json
from tasks.local import frontdoor as F
from tests.local.conftest import FAST
fd = F.ensure_frontdoor({store!r}, "tiny", "127.0.0.1", {port}, settings=FAST)
F.put_server(fd, "127.0.0.1", {a.port}, weight=100)
F.put_server(fd, "127.0.0.1", {b.port})
F.set_traffic(fd, "a", "b", 30)
print(fd.pid)
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[-1])
    # the process that started HAProxy is gone; the front door still serves
    with httpx.Client(timeout=10) as c:
        assert stream(c, f"http://127.0.0.1:{port}").ok
    fd = F.ensure_frontdoor(store, "tiny", "127.0.0.1", port)  # settings=None: keeps the persisted ones
    assert fd.pid == pid and fd.settings == FAST
    assert [(s.server.port, s.weight, s.state) for s in fd.slots] == [(a.port, 70, "ready"), (b.port, 30, "ready")]
    # a change made behind the record's back (HAProxy's live state is the truth) is copied back
    F.runtime_command(fd, "set server llm/b weight 40")
    assert F.ensure_frontdoor(store, "tiny", "127.0.0.1", port).slot("b").weight == 40
    # and a new process sees what this one changed
    F.set_traffic(fd, "a", "b", 50)
    code2 = f"""
from tasks.local import frontdoor as F
fd = F.ensure_frontdoor({store!r}, "tiny", "127.0.0.1", {port})
print(fd.pid, *[s.weight for s in fd.slots], F.read_figures(fd).slots["b"].weight)
"""
    out = subprocess.run([sys.executable, "-c", code2], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [str(pid), "50", "50", "50"], out.stderr


def test_a_dead_haproxy_is_restarted_with_the_same_backends(store, port, backends):
    a, b = backends("one"), backends("two")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", a.port, weight=100)
    F.put_server(fd, "127.0.0.1", b.port)
    F.set_traffic(fd, "a", "b", 20)
    os.kill(fd.pid, 9)
    deadline = time.monotonic() + 5
    while F._alive(fd.pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert not F.describe(store, "tiny").running
    again = F.ensure_frontdoor(store, "tiny", "127.0.0.1", port)
    assert again.pid != fd.pid and again.restarts == 1 and again.url == fd.url
    assert [(s.server.port, s.weight) for s in again.slots] == [(a.port, 80), (b.port, 20)]
    with httpx.Client(timeout=10) as c:
        answers = [stream(c, again.url) for _ in range(100)]
    assert all(x.ok for x in answers)
    assert sum(x.model == "two" for x in answers) == 20
    # a mutation finds it dead too and restarts it the same way
    os.kill(again.pid, 9)
    while F._alive(again.pid):
        time.sleep(0.01)
    F.set_traffic(fd, "a", "b", 0)
    assert F.load_frontdoor(store, "tiny").restarts == 2


def test_stop_leaves_no_process_and_frees_the_port(store, port, backends):
    a = backends("one")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", a.port, weight=100)
    assert F.describe(store, "tiny").running
    assert F.stop_frontdoor(store, "tiny")
    assert not F._alive(fd.pid) and not os.path.exists(f"/proc/{fd.pid}")
    assert not fd.socket_path.exists() and not fd.record_path.exists() and not fd.pid_path.exists()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))  # free again
    assert F.describe(store, "tiny") is None and F.list_frontdoors(store) == []
    assert not F.stop_frontdoor(store, "tiny")
    fresh = _door(store, port)  # a later promotion starts empty
    assert all(s.server is None for s in fresh.slots)


def test_a_missing_haproxy_is_bad_input_naming_the_install_command(store, port, monkeypatch, tmp_path):
    monkeypatch.setenv("LLMSHIP_HAPROXY", str(tmp_path / "no-such-haproxy"))
    with pytest.raises(BadInput) as e:
        _door(store, port)
    assert e.value.exit_code == EXIT_BAD_INPUT and "apt-get install -y haproxy" in e.value.hint
    assert "make system" in e.value.hint and "LLMSHIP_HAPROXY" in str(e.value)
    monkeypatch.delenv("LLMSHIP_HAPROXY")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(F, "FALLBACK_PATHS", ())
    with pytest.raises(BadInput) as e:
        _door(store, port)
    assert "not installed" in e.value.message and "apt-get install -y haproxy" in e.value.render()
    assert F.list_frontdoors(store) == []
    not_haproxy = tmp_path / "haproxy"
    not_haproxy.write_text("#!/bin/sh\necho hello\n")
    not_haproxy.chmod(0o755)
    with pytest.raises(BadInput, match="not an haproxy binary"):
        _door(store, port)


def test_an_occupied_port_is_bad_input_naming_it(store, port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
        with pytest.raises(BadInput) as e:
            _door(store, port)
    assert e.value.obj == f"127.0.0.1:{port}" and "already in use" in e.value.message
    assert f"pid {os.getpid()}" in e.value.message  # who holds it
    assert "llmship status" in e.value.hint


def test_an_address_this_machine_cannot_listen_on_is_bad_input(store, port):
    with pytest.raises(BadInput, match="cannot resolve the listen host"):
        F.ensure_frontdoor(store, "tiny", "no-such-host.invalid", port)
    with pytest.raises(BadInput, match="cannot listen there"):
        F.ensure_frontdoor(store, "tiny", "192.0.2.1", port)  # TEST-NET: not an address of this machine
    assert F.list_frontdoors(store) == []


def test_two_names_on_one_port_name_the_other_front_door(store, port):
    _door(store, port, name="first")
    with pytest.raises(BadInput, match="front door of 'first'"):
        _door(store, port, name="second")
    assert F.describe(store, "first").running


def test_haproxy_refusing_its_config_is_stage_failed_with_its_message(store, port):
    bad = F.FrontDoorSettings.model_construct(**{**FAST.model_dump(), "check_path": "/health bogus-word"})
    with pytest.raises(StageFailed) as e:
        _door(store, port, settings=bad)
    assert "refused" in e.value.message and "bogus-word" in e.value.detail  # HAProxy's own words
    assert not isinstance(e.value, BadInput)


def test_a_server_that_fails_its_health_check_is_not_put(store, port, backends):
    a = backends("one")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", a.port, weight=100)
    from tasks.local.server import free_port

    with pytest.raises(StageFailed, match="L4CON"):
        F.put_server(fd, "127.0.0.1", free_port(), weight=50, wait_up_s=0.5)
    assert F.load_frontdoor(store, "tiny").slot("b").server is None
    assert F.put_server(fd, "localhost", a.port, weight=100).name == "a"  # already there: same slot


def test_guards_against_leaving_nothing_serving(store, port, backends):
    a, b, c = backends("one"), backends("two"), backends("three")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", a.port, weight=100)
    with pytest.raises(StageFailed, match="no server taking traffic"):
        F.set_weights(fd, {"a": 0})
    with pytest.raises(StageFailed, match="no server taking traffic"):
        F.drain_slot(fd, "a")
    with pytest.raises(StageFailed, match="empty"):
        F.set_weights(fd, {"b": 10})
    F.put_server(fd, "127.0.0.1", b.port)
    with pytest.raises(StageFailed, match="both slots"):
        F.put_server(fd, "127.0.0.1", c.port)
    with pytest.raises(BadInput):
        F.set_traffic(fd, "a", "b", 101)
    assert F.drain_slot(fd, "b").drained  # weight 0: nothing to wait for
    assert F.drain_slot(fd, "a", allow_empty=True).drained  # stopping the name
    assert all(s.server is None for s in F.load_frontdoor(store, "tiny").slots)


def test_describe_for_llmship_status(store, port, backends):
    a, b = backends("one"), backends("two")
    fd = _door(store, port)
    F.put_server(fd, "127.0.0.1", a.port, weight=100)
    F.put_server(fd, "127.0.0.1", b.port)
    F.set_traffic(fd, "a", "b", 10)
    st = F.describe(store, "tiny")
    assert st.running and st.pid == fd.pid and st.url == fd.url
    assert [(s.server, s.weight, s.state, s.status) for s in st.slots] == [
        (a.url, 90, "ready", "UP"), (b.url, 10, "ready", "UP")]
    text = "\n".join(st.lines())
    assert fd.url in text and a.url in text and "weight 10" in text
    F.stop_frontdoor(store, "tiny", forget=False)
    st = F.describe(store, "tiny")
    assert not st.running and {s.status for s in st.slots} == {"stopped"} and "NOT RUNNING" in st.lines()[0]


def test_a_deep_store_path_still_reaches_the_socket(tmp_path, port, backends):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    store = str(deep / "store")
    a = backends("one")
    try:
        fd = _door(store, port)
        assert len(str(fd.socket_path)) > 108
        F.put_server(fd, "127.0.0.1", a.port, weight=100)
        assert F.read_figures(fd).slots["a"].up
    finally:
        F.stop_frontdoor(store, "tiny")
