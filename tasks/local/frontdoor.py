"""The front door of the local target: one HAProxy per served name, on one fixed address.

Clients (and the synthetic load) always talk to `http://<target.host>:<target.port>`; behind
it, one backend with two server slots, `a` and `b`, holds the stable and the candidate vLLM
servers. A promotion never reloads HAProxy: it fills the free slot, sets the two weights and
drains the old slot, all through HAProxy's runtime API (a unix socket):

    fd = ensure_frontdoor(store_uri, "tiny", "127.0.0.1", 8000)     # start, or reconnect
    stable = put_server(fd, "127.0.0.1", 41001, weight=100).name    # the first server
    cand = put_server(fd, "127.0.0.1", 41002).name                 # weight 0 until a step
    set_traffic(fd, stable, cand, 25)                              # stable 75, candidate 25
    fig = read_figures(fd)                                         # per-slot counters
    set_traffic(fd, stable, cand, 100)
    drain_slot(fd, stable, timeout_s=120)                          # in-flight requests finish
    stop_server(old_vllm_pid)                                      # then the old server stops

HAProxy runs as a detached child (its own session) so it outlives the `llmship` command that
started it. Everything it needs lives under `<store>/frontdoor/<name>/`:

    frontdoor.json   the record: address, pid, settings, and each slot's server/weight/state
    haproxy.cfg      rendered from the record at every start
    admin.sock       the runtime API (level admin, mode 600)
    haproxy.pid      the running process
    haproxy.log      HAProxy's own messages, health changes and abnormal requests
    lock             serialises changes between llmship processes

The record is what a restart is built from; while HAProxy runs, its live state is the
truth, and `ensure_frontdoor` copies it back into the record.

Plain functions and small pydantic values; no Prefect inside.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

from tasks.errors import BadInput, StageFailed
from tasks.local.server import is_alive, stop_server
from tasks.storage.local import store_root

STAGE = "frontdoor"
BACKEND = "llm"
FRONTEND = "frontdoor"
SLOT_NAMES: tuple[str, str] = ("a", "b")
SlotName = Literal["a", "b"]
SlotState = Literal["ready", "drain", "maint"]
MIN_VERSION = (2, 2)  # http-check send/expect, retry-on, set server addr ... port
INSTALL_HINT = ("install it: `sudo apt-get install -y haproxy` (or `make system`), "
                "or set LLMSHIP_HAPROXY to the haproxy binary")
# Debian installs haproxy in /usr/sbin, which is not on every user's PATH.
FALLBACK_PATHS: tuple[str, ...] = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")
_MAX_WEIGHT = 256  # HAProxy's limit

# HAProxy's srv_admin_state bits (show servers state). 0x04 only records "disabled in the config"
# and stays set after the server leaves maintenance.
_ADM_MAINT = 0x01 | 0x02 | 0x20  # forced, inherited, DNS resolution
_ADM_DRAIN = 0x08 | 0x10  # forced, inherited


# ------------------------------------------------------------------ values
class _Value(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrontDoorSettings(_Value):
    """How HAProxy checks and waits. Persisted with the record, so a restart uses the same."""

    check_path: str = "/health"
    check_interval_ms: int = Field(2000, ge=10, description="between health checks of an UP server")
    check_fast_interval_ms: int = Field(250, ge=10, description="while a server goes up or down")
    check_down_interval_ms: int = Field(500, ge=10, description="between checks of a DOWN server (a new one too)")
    check_rise: int = Field(2, ge=1, description="passing checks before a DOWN server takes traffic")
    check_fall: int = Field(3, ge=1, description="failing checks before an UP server is DOWN")
    check_timeout_ms: int = Field(5000, ge=10, description="a slower check fails (vLLM-CPU under load answers late)")
    connect_timeout_s: float = Field(5.0, gt=0)
    # Inactivity limits, not request limits: a long prefill behind a queue sends nothing for a while.
    client_timeout_s: float = Field(600.0, gt=0)
    server_timeout_s: float = Field(600.0, gt=0)
    request_head_timeout_s: float = Field(30.0, gt=0, description="to receive a request's headers")
    keepalive_timeout_s: float = Field(60.0, gt=0, description="an idle client connection stays open")
    queue_timeout_s: float = Field(60.0, gt=0, description="a request waits for a server slot at most")
    maxconn: int = Field(4096, ge=16)
    threads: int | None = Field(None, ge=1, le=64, description="HAProxy threads; None: one per CPU")
    no_delay: bool = Field(True, description="option http-no-delay: every streamed chunk leaves at once")


class Backend(_Value):
    """A server behind the front door (an IP literal: the runtime API takes no host names)."""

    host: str
    port: int = Field(ge=1, le=65535)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"


class Slot(_Value):
    """One server slot of the backend: empty (maint), taking traffic by weight (ready), or draining."""

    name: SlotName
    server: Backend | None = None
    weight: int = Field(0, ge=0, le=_MAX_WEIGHT)
    state: SlotState = "maint"


class FrontDoor(_Value):
    """The persisted record of one front door; operations take it to find the front door."""

    name: str
    host: str
    port: int = Field(ge=1, le=65535)
    dir: str
    pid: int | None = None
    binary: str = ""
    version: str = ""
    started: str = ""
    restarts: int = 0
    settings: FrontDoorSettings = FrontDoorSettings()
    slots: tuple[Slot, Slot] = (Slot(name="a"), Slot(name="b"))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def path(self) -> Path:
        return Path(self.dir)

    @property
    def record_path(self) -> Path:
        return self.path / "frontdoor.json"

    @property
    def config_path(self) -> Path:
        return self.path / "haproxy.cfg"

    @property
    def socket_path(self) -> Path:
        return self.path / "admin.sock"

    @property
    def pid_path(self) -> Path:
        return self.path / "haproxy.pid"

    @property
    def log_path(self) -> Path:
        return self.path / "haproxy.log"

    def slot(self, name: str) -> Slot:
        for s in self.slots:
            if s.name == name:
                return s
        raise BadInput(STAGE, f"front door {self.name}", f"no slot {name!r}", f"use one of {', '.join(SLOT_NAMES)}")

    def slot_of(self, host: str, port: int) -> SlotName | None:
        """The slot holding this server, or None."""
        want = Backend(host=_ip(host), port=port)
        for s in self.slots:
            if s.server == want:
                return s.name
        return None

    def free_slot(self) -> SlotName | None:
        for s in self.slots:
            if s.server is None:
                return s.name
        return None


class SlotFigures(_Value):
    """One slot as HAProxy counts it (`show stat`). Counters start at 0 when HAProxy starts."""

    slot: SlotName
    server: Backend | None
    state: SlotState  # what llmship set
    status: str  # HAProxy's: UP, DOWN, MAINT, DRAIN, "UP 1/3" (going down), "DOWN 1/2" (going up)
    up: bool  # the health check passes (UP or DRAIN)
    weight: int  # effective weight (0 while draining)
    current_sessions: int  # requests being served now (streams in flight)
    queued: int
    total_sessions: int
    requests: int  # HTTP requests sent to this server
    responses: dict[str, int]  # by class: 1xx 2xx 3xx 4xx 5xx other
    connect_errors: int
    response_errors: int
    retries: int
    redispatches: int
    client_aborts: int
    server_aborts: int
    check: str  # last check: e.g. "L7OK 200", "L4CON Connection refused"


class FrontDoorFigures(_Value):
    """A reading of every slot and the frontend, with HAProxy's pid: counters reset when it changes."""

    name: str
    pid: int | None
    at: float  # time.time() of the reading
    requests: int  # HTTP requests the frontend received
    current_sessions: int  # client connections open now
    responses: dict[str, int]  # what the frontend answered, by class
    slots: dict[str, SlotFigures]

    def requests_since(self, before: "FrontDoorFigures | None" = None) -> dict[str, int]:
        """Requests each slot received since `before` (all since start without it). A restart in
        between (another pid) makes `before` meaningless: StageFailed."""
        if before is not None and before.pid != self.pid:
            raise StageFailed(STAGE, f"front door {self.name}", "HAProxy restarted between the two readings",
                              "take a new first reading; counters started again at 0")
        return {k: s.requests - (before.slots[k].requests if before else 0) for k, s in self.slots.items()}

    def split(self, before: "FrontDoorFigures | None" = None) -> dict[str, float]:
        """Each slot's share of the requests since `before` (0..1); all 0 when none came."""
        got = self.requests_since(before)
        total = sum(got.values())
        return {k: (v / total if total else 0.0) for k, v in got.items()}


class DrainResult(_Value):
    slot: SlotName
    server: Backend | None  # what the slot held (None: it was already empty)
    drained: bool  # every in-flight request finished before the timeout
    forced: bool  # requests still running at the timeout were cut (force=True)
    sessions_left: int
    waited_s: float


class SlotStatus(_Value):
    slot: SlotName
    server: str | None  # http://host:port
    weight: int
    state: SlotState
    status: str  # HAProxy's health status, "stopped" when HAProxy is not running
    current_sessions: int | None


class FrontDoorStatus(_Value):
    """What `llmship status` shows about a front door."""

    name: str
    url: str
    pid: int | None
    running: bool
    since: str
    dir: str
    log_path: str
    slots: tuple[SlotStatus, ...]

    def lines(self) -> list[str]:
        head = f"front door {self.url}  " + (f"HAProxy pid {self.pid}, since {self.since}" if self.running
                                              else "NOT RUNNING (`llmship promote` restarts it)")
        out = [head]
        for s in self.slots:
            if s.server is None:
                out.append(f"  slot {s.slot}: empty")
                continue
            cur = "" if s.current_sessions is None else f", {s.current_sessions} in flight"
            out.append(f"  slot {s.slot}: {s.server}  weight {s.weight}  {s.state}  {s.status}{cur}")
        return out


# ------------------------------------------------------------------ the binary
def haproxy_binary() -> str:
    """The haproxy to run: $LLMSHIP_HAPROXY, else `haproxy` on PATH, else Debian's /usr/sbin/haproxy."""
    named = os.environ.get("LLMSHIP_HAPROXY", "").strip()
    if named:
        found = shutil.which(named)
        if not found:
            raise BadInput(STAGE, named, "LLMSHIP_HAPROXY names no executable haproxy", INSTALL_HINT)
    else:
        found = shutil.which("haproxy") or next((p for p in FALLBACK_PATHS if os.access(p, os.X_OK)), None)
        if not found:
            raise BadInput(STAGE, "haproxy", "HAProxy is not installed; the local target's front door runs on it",
                           INSTALL_HINT)
    version = haproxy_version(found)
    nums = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if nums < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise BadInput(STAGE, found, f"HAProxy {version} is too old (the front door needs {need} or later)",
                       INSTALL_HINT)
    return found


def haproxy_version(binary: str) -> str:
    st = os.stat(binary)
    return _version(binary, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=8)
def _version(binary: str, _mtime: int, _size: int) -> str:
    try:
        p = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise BadInput(STAGE, binary, f"cannot run HAProxy: {err}", INSTALL_HINT) from None
    m = re.search(r"version (\d+\.\d+[^\s]*)", p.stdout + p.stderr)
    if p.returncode != 0 or not m:
        raise BadInput(STAGE, binary, "this is not an haproxy binary (`-v` printed no version)", INSTALL_HINT,
                       detail=(p.stdout + p.stderr)[-2000:])
    return m.group(1)


# ------------------------------------------------------------------ files
def frontdoor_dir(store_uri: str, name: str) -> Path:
    return store_root(store_uri) / "frontdoor" / name


def list_frontdoors(store_uri: str) -> list[str]:
    """Names with a front door record in this store (running or not)."""
    base = store_root(store_uri) / "frontdoor"
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "frontdoor.json").is_file())


def load_frontdoor(store_uri: str, name: str) -> FrontDoor | None:
    """The record as persisted; starts nothing, asks HAProxy nothing."""
    return _read(frontdoor_dir(store_uri, name))


def _read(d: Path) -> FrontDoor | None:
    path = d / "frontdoor.json"
    if not path.is_file():
        return None
    try:
        return FrontDoor.model_validate_json(path.read_text())
    except ValueError as err:
        raise StageFailed(STAGE, str(path), f"the front door record is unreadable: {err}",
                          "`llmship stop` the name (it removes the record), then promote again") from None


def _publish_text(path: Path, text: str) -> None:
    """Write beside, verify, rename over: a reader sees the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    data = text.encode()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if tmp.read_bytes() != data:
        tmp.unlink(missing_ok=True)
        raise StageFailed(STAGE, str(path), "written file does not read back the same", "check the disk and re-run")
    os.replace(tmp, path)


def _save(rec: FrontDoor) -> FrontDoor:
    _publish_text(rec.record_path, rec.model_dump_json(indent=2) + "\n")
    return rec


@contextlib.contextmanager
def _locked(d: Path) -> Iterator[None]:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------------ the config
def _ip(host: str) -> str:
    """An IP literal for the runtime API (`set server addr` takes no names)."""
    h = host.strip("[]")
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(h, None, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise BadInput(STAGE, host, f"cannot resolve the server's host: {err}", "use an IP address") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)  # IPv4 first, like the servers' own binds
    return infos[0][4][0]


def _hostport(host: str, port: int) -> str:
    # HAProxy splits at the last colon, so IPv6 needs no brackets ("::1:8000").
    return f"{host.strip('[]')}:{port}"


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def render_config(rec: FrontDoor) -> str:
    """haproxy.cfg for a record. Slots that are empty or draining start in maintenance."""
    s = rec.settings
    glob = [
        "global",
        "    log stderr format raw local0 info",
        # relative: HAProxy runs in the front door's folder, so the path stays under the
        # 108-byte unix socket limit however deep the store is
        "    stats socket unix@admin.sock mode 600 level admin",
        "    stats timeout 30s",
        f"    maxconn {s.maxconn}",
        # never share the port with another process (SO_REUSEPORT would split its traffic silently)
        "    noreuseport",
    ]
    if s.threads:
        glob.append(f"    nbthread {s.threads}")
    defaults = [
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlog-normal",  # log only errors, aborts and retries
        "    option abortonclose",  # a client that gives up frees its place in the server's queue
        f"    timeout connect {_ms(s.connect_timeout_s)}",
        f"    timeout client {_ms(s.client_timeout_s)}",
        f"    timeout server {_ms(s.server_timeout_s)}",
        f"    timeout http-request {_ms(s.request_head_timeout_s)}",
        f"    timeout http-keep-alive {_ms(s.keepalive_timeout_s)}",
        f"    timeout queue {_ms(s.queue_timeout_s)}",
        f"    timeout check {s.check_timeout_ms}ms",
        # A refused connection or a reused keep-alive connection the server had just closed is
        # retried on the other slot; once a response has begun nothing is ever retried.
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response",
    ]
    if s.no_delay:
        defaults.append("    option http-no-delay")
    front = [
        f"frontend {FRONTEND}",
        f"    bind {_hostport(rec.host, rec.port)}",
        f"    default_backend {BACKEND}",
    ]
    check = (f"check inter {s.check_interval_ms} fastinter {s.check_fast_interval_ms} "
             f"downinter {s.check_down_interval_ms} rise {s.check_rise} fall {s.check_fall}")
    back = [
        f"backend {BACKEND}",
        "    balance roundrobin",  # follows the weights request by request, and takes new weights at once
        "    option httpchk",
        f"    http-check send meth GET uri {s.check_path} ver HTTP/1.1 hdr Host localhost",
        "    http-check expect status 200",
        "    http-response set-header x-llmship-slot %[srv_name]",
        f"    default-server {check}",
    ]
    for slot in rec.slots:
        if slot.server is not None and slot.state == "ready":
            back.append(f"    server {slot.name} {_hostport(slot.server.host, slot.server.port)} weight {slot.weight}")
        else:
            back.append(f"    server {slot.name} 127.0.0.1:1 weight 0 disabled")
    return "\n".join(["# written by llmship from frontdoor.json at every start; edits here are lost", ""]
                     + glob + [""] + defaults + [""] + front + [""] + back) + "\n"


# ------------------------------------------------------------------ the runtime API
def _connect(sock_path: Path, timeout_s: float) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    path = str(sock_path)
    try:
        if len(path.encode()) < 100:
            s.connect(path)
        else:  # too long for sun_path: go through the folder's descriptor
            dfd = os.open(sock_path.parent, os.O_PATH)
            try:
                s.connect(f"/proc/self/fd/{dfd}/{sock_path.name}")
            finally:
                os.close(dfd)
    except BaseException:
        s.close()
        raise
    return s


def runtime_command(fd: FrontDoor, command: str, timeout_s: float = 5.0) -> str:
    """One command on HAProxy's runtime API; its whole answer."""
    try:
        with _connect(fd.socket_path, timeout_s) as s:
            s.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                data = s.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError as err:
        raise StageFailed(STAGE, f"front door {fd.name}", f"HAProxy's runtime API did not answer ({err})",
                          f"read {fd.log_path}; `llmship promote` restarts a front door that died") from None
    return b"".join(chunks).decode(errors="replace")


def _set(fd: FrontDoor, command: str, ok: tuple[str, ...] = ()) -> None:
    out = runtime_command(fd, command).strip()
    if out and not any(k in out for k in ok):
        raise StageFailed(STAGE, f"front door {fd.name}", f"HAProxy refused `{command}`: {out}",
                          f"read {fd.log_path}")


def _show_stat(fd: FrontDoor) -> dict[str, dict[str, str]]:
    text = runtime_command(fd, "show stat")
    if not text.startswith("# "):
        raise StageFailed(STAGE, f"front door {fd.name}", f"unexpected answer to `show stat`: {text[:200]!r}",
                          f"read {fd.log_path}")
    rows = csv.DictReader(io.StringIO(text[2:]))
    return {r["svname"]: r for r in rows if r["pxname"] in (BACKEND, FRONTEND)
            and (r["pxname"] == BACKEND or r["svname"] == "FRONTEND")}


def _show_servers_state(fd: FrontDoor) -> dict[str, dict[str, str]]:
    lines = [ln for ln in runtime_command(fd, f"show servers state {BACKEND}").splitlines() if ln.strip()]
    head = next((ln[2:].split() for ln in lines if ln.startswith("# ")), None)
    if not head:
        raise StageFailed(STAGE, f"front door {fd.name}", "unexpected answer to `show servers state`",
                          f"read {fd.log_path}")
    out = {}
    for ln in lines:
        if ln.startswith("#") or " " not in ln:
            continue
        row = dict(zip(head, ln.split()))
        out[row["srv_name"]] = row
    return out


def _int(v: str | None) -> int:
    try:
        return int(v) if v not in (None, "") else 0
    except ValueError:
        return 0


# ------------------------------------------------------------------ processes
_children: dict[int, subprocess.Popen] = {}  # HAProxies this process started, so exits are reaped


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is None
    if not is_alive(pid):
        return False
    try:  # a zombie whose parent (another llmship) has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _is_ours(rec: FrontDoor) -> bool:
    """The pid still is this front door's HAProxy (not a recycled pid)."""
    if not _alive(rec.pid):
        return False
    try:
        args = Path(f"/proc/{rec.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(rec.config_path).encode() in args


def _running(rec: FrontDoor) -> bool:
    return _is_ours(rec)


def _who_listens(port: int) -> str:
    """Best effort: which process listens on this TCP port ("pid 123 (python3)")."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f[9])
    if not inodes:
        return ""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            for link in (p / "fd").iterdir():
                target = os.readlink(link)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    comm = (p / "comm").read_text().strip()
                    found.append(f"pid {p.name} ({comm})")
                    break
        except OSError:
            continue
    return ", ".join(found)


def _port_taken(host: str, port: int) -> bool:
    """True if something listens on host:port; BadInput if this machine cannot listen there at all."""
    where = f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise BadInput(STAGE, where, f"cannot resolve the listen host: {err.strerror}",
                       "set target.host to an IP address or a name this machine resolves") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HAProxy binds: TIME_WAIT is no conflict
        try:
            s.bind(addr)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise BadInput(STAGE, where, f"cannot listen there: {err.strerror}",
                           "set target.host to an address of this machine (127.0.0.1: this machine only) "
                           "and target.port to a port above 1023") from None
    return False


def _check_port(rec: FrontDoor) -> None:
    if not _port_taken(rec.host, rec.port):
        return
    who = _who_listens(rec.port)
    other = ""
    root = rec.path.parent
    if root.is_dir():
        for p in root.iterdir():
            o = _read(p) if p != rec.path and (p / "frontdoor.json").is_file() else None
            if o is not None and o.port == rec.port and _running(o):
                other = f" by the front door of {o.name!r} (pid {o.pid})"
    by = other or (f" by {who}" if who else "")
    raise BadInput(STAGE, f"{rec.host}:{rec.port}", f"port is already in use{by}",
                   "stop what listens there (`llmship status`, `llmship stop`) or give target.port another port")


def _log_tail(path: Path, offset: int, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _start(rec: FrontDoor, binary: str, timeout_s: float) -> FrontDoor:
    """Render the config from the record, check it, start HAProxy detached, wait for its socket."""
    _check_port(rec)
    cfg = render_config(rec)
    _publish_text(rec.config_path, cfg)
    check = subprocess.run([binary, "-c", "-f", str(rec.config_path)], capture_output=True, text=True,
                           cwd=rec.dir, timeout=30)
    if check.returncode != 0:
        raise StageFailed(STAGE, str(rec.config_path), "HAProxy refused the front door's config",
                          f"read the config; HAProxy {haproxy_version(binary)} at {binary} said why",
                          detail=(check.stdout + check.stderr).strip()[-3000:])
    rec.socket_path.unlink(missing_ok=True)
    rec.log_path.parent.mkdir(parents=True, exist_ok=True)
    offset = rec.log_path.stat().st_size if rec.log_path.exists() else 0
    cmd = [binary, "-db", "-f", str(rec.config_path)]
    with rec.log_path.open("ab") as log:
        log.write(f"--- {_now()} llmship starts: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=rec.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)
    _children[proc.pid] = proc
    started = rec.model_copy(update=dict(pid=proc.pid, binary=binary, version=haproxy_version(binary),
                                         started=_now(), restarts=rec.restarts + (1 if rec.started else 0)))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if proc.poll() is not None:
                tail = _log_tail(rec.log_path, offset)
                if "cannot bind socket" in tail or "Address already in use" in tail:
                    who = _who_listens(rec.port)
                    raise BadInput(STAGE, f"{rec.host}:{rec.port}",
                                   "port is already in use" + (f" by {who}" if who else ""),
                                   "stop what listens there (`llmship status`, `llmship stop`) or give target.port "
                                   "another port", detail=tail)
                raise StageFailed(STAGE, f"front door {rec.name}", f"HAProxy exited with code {proc.returncode} "
                                  "while starting", f"read {rec.log_path}", detail=tail)
            if rec.socket_path.exists():
                with contextlib.suppress(StageFailed):
                    if "Name: HAProxy" in runtime_command(started, "show info", timeout_s=2):
                        break
            if time.monotonic() > deadline:
                raise StageFailed(STAGE, f"front door {rec.name}", f"HAProxy did not answer on {rec.socket_path} "
                                  f"within {timeout_s:.0f} s", f"read {rec.log_path}",
                                  detail=_log_tail(rec.log_path, offset))
            time.sleep(0.02)
    except BaseException:
        _stop_pid(proc.pid)
        raise
    _publish_text(rec.pid_path, f"{proc.pid}\n")
    # A slot that was draining when HAProxy died has no session left to wait for: it is out.
    slots = tuple(s if s.state == "ready" else Slot(name=s.name) for s in started.slots)
    return _save(started.model_copy(update=dict(slots=slots)))


def _stop_pid(pid: int) -> None:
    stop_server(pid)
    proc = _children.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(Exception):
            proc.wait(timeout=1)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sync(rec: FrontDoor) -> FrontDoor:
    """Copy HAProxy's live slot state into the record (after a crash between a change and its save)."""
    live = _show_servers_state(rec)
    slots = []
    for old in rec.slots:
        row = live.get(old.name)
        if row is None:
            raise StageFailed(STAGE, f"front door {rec.name}", f"HAProxy has no server {BACKEND}/{old.name}",
                              "`llmship stop` the name and promote again")
        adm = _int(row.get("srv_admin_state"))
        if adm & _ADM_MAINT:
            slots.append(Slot(name=old.name))
            continue
        state: SlotState = "drain" if adm & _ADM_DRAIN else "ready"
        server = Backend(host=row["srv_addr"], port=_int(row.get("srv_port")))
        slots.append(Slot(name=old.name, server=server, weight=_int(row.get("srv_uweight")), state=state))
    new = rec.model_copy(update=dict(slots=tuple(slots)))
    return _save(new) if new != rec else rec


def _live(fd: FrontDoor, start_timeout_s: float = 10.0) -> FrontDoor:
    """The current record, with HAProxy running: restarted with the same backends if it died.
    Call under the lock."""
    rec = _read(fd.path)
    if rec is None:
        raise StageFailed(STAGE, f"front door {fd.name}", "no front door record (it was stopped)",
                          "call ensure_frontdoor first")
    if _running(rec):
        return rec
    return _start(rec, haproxy_binary(), start_timeout_s)


# ------------------------------------------------------------------ operations
def ensure_frontdoor(store_uri: str, name: str, host: str = "127.0.0.1", port: int = 8000,
                     settings: FrontDoorSettings | None = None, start_timeout_s: float = 10.0) -> FrontDoor:
    """The running front door for `name` on host:port.

    Reconnects to a running one (its live slot state copied into the record); restarts one
    whose process died, with the same backends and weights; starts a new one with both slots
    empty. A new address or new settings restart it (in-flight requests are cut: the address
    is the spec's, so this happens only when the spec changes it). `settings=None` keeps the
    persisted ones."""
    binary = haproxy_binary()
    if not 1 <= port <= 65535:
        raise BadInput(STAGE, f"{host}:{port}", "not a TCP port", "set target.port to a port in 1024..65535")
    d = frontdoor_dir(store_uri, name)
    with _locked(d):
        rec = _read(d)
        if rec is None:
            fresh = FrontDoor(name=name, host=host, port=port, dir=str(d), settings=settings or FrontDoorSettings())
            return _start(fresh, binary, start_timeout_s)
        want = rec.model_copy(update=dict(host=host, port=port, settings=settings or rec.settings))
        if _running(rec):
            rec = _sync(rec)
            if (want.host, want.port, want.settings) == (rec.host, rec.port, rec.settings):
                return rec
            want = rec.model_copy(update=dict(host=host, port=port, settings=want.settings))
            if (host, port) != (rec.host, rec.port):
                _check_port(want)  # before the old one stops: a taken new port must not leave nothing serving
            _stop_pid(rec.pid)
        return _start(want, binary, start_timeout_s)


def _wait_status(fd: FrontDoor, slot: str, want_up: bool, timeout_s: float) -> SlotFigures:
    deadline = time.monotonic() + timeout_s
    while True:
        f = read_figures(fd).slots[slot]
        if f.up == want_up:
            return f
        if time.monotonic() > deadline:
            raise StageFailed(STAGE, f"slot {slot} of front door {fd.name}",
                              f"{f.server.url if f.server else 'the slot'} is {f.status} after {timeout_s:g} s "
                              f"(last check: {f.check or 'none'})",
                              f"check that the server answers GET {fd.settings.check_path} with 200; "
                              f"read {fd.log_path}")
        time.sleep(0.05)


def wait_up(fd: FrontDoor, slot: str, timeout_s: float = 30.0) -> SlotFigures:
    """Wait until the slot's health check passes; StageFailed with the last check's result if not."""
    return _wait_status(fd, slot, True, timeout_s)


def put_server(fd: FrontDoor, host: str, port: int, weight: int = 0, wait_up_s: float = 60.0) -> Slot:
    """Put a server into the free slot: it takes no traffic until a fresh health check passes,
    then gets `weight` (0: none until set_weights). A server already in a slot keeps its slot
    (a resumed promotion puts the same candidate again). On a failed check the slot is emptied
    again and StageFailed says why."""
    _check_weight(fd, weight)
    server = Backend(host=_ip(host), port=port)
    with _locked(fd.path):
        rec = _live(fd)
        name = rec.slot_of(server.host, server.port)
        if name is not None and rec.slot(name).state == "ready":
            if rec.slot(name).weight != weight:
                _set(rec, f"set server {BACKEND}/{name} weight {weight}")
                rec = _save(_with_slot(rec, rec.slot(name).model_copy(update=dict(weight=weight))))
            wait_up(rec, name, wait_up_s)
            return rec.slot(name)
        name = name or rec.free_slot()
        if name is None:
            busy = ", ".join(f"{s.name}: {s.server.url}" for s in rec.slots if s.server)
            raise StageFailed(STAGE, f"front door {rec.name}", f"both slots hold a server ({busy})",
                              "drain one first (drain_slot): a front door holds the stable and one candidate")
        srv = f"{BACKEND}/{name}"
        _set(rec, f"set server {srv} state maint")
        _set(rec, f"set server {srv} weight 0")
        _set(rec, f"set server {srv} addr {server.host} port {server.port}", ok=("changed", "no need to change"))
        _set(rec, f"set server {srv} state ready")
        # leaving maintenance counts as UP until the next check: force a real check first (weight is 0)
        _set(rec, f"set server {srv} health down")
        rec = _save(_with_slot(rec, Slot(name=name, server=server, weight=0, state="ready")))
        try:
            wait_up(rec, name, wait_up_s)
        except StageFailed:
            _set(rec, f"set server {srv} state maint")
            _save(_with_slot(rec, Slot(name=name)))
            raise
        if weight:
            _set(rec, f"set server {srv} weight {weight}")
        return _save(_with_slot(rec, Slot(name=name, server=server, weight=weight, state="ready"))).slot(name)


def _with_slot(rec: FrontDoor, slot: Slot) -> FrontDoor:
    return rec.model_copy(update=dict(slots=tuple(slot if s.name == slot.name else s for s in rec.slots)))


def _check_weight(fd: FrontDoor, weight: int) -> None:
    if not isinstance(weight, int) or not 0 <= weight <= _MAX_WEIGHT:
        raise BadInput(STAGE, f"front door {fd.name}", f"weight {weight!r} is not an integer in 0..{_MAX_WEIGHT}",
                       "give traffic percents 0..100")


def set_weights(fd: FrontDoor, weights: Mapping[str, int]) -> FrontDoor:
    """Set slot weights (relative, 0..256; the canary uses percents). Raised weights are applied
    before lowered ones, so no instant has every weight at 0. Refuses a weight on an empty or
    draining slot, and weights that would leave no slot taking traffic."""
    for w in weights.values():
        _check_weight(fd, w)
    with _locked(fd.path):
        rec = _live(fd)
        for name, w in weights.items():
            s = rec.slot(name)
            if w and (s.server is None or s.state != "ready"):
                raise StageFailed(STAGE, f"slot {name} of front door {rec.name}",
                                  f"cannot take weight {w}: it is {'empty' if s.server is None else s.state}",
                                  "put a server into the slot first (put_server)")
        after = {s.name: (weights.get(s.name, s.weight) if s.state == "ready" and s.server else 0) for s in rec.slots}
        if any(s.server for s in rec.slots) and not any(after.values()):
            raise StageFailed(STAGE, f"front door {rec.name}",
                              f"weights {dict(weights)} leave no server taking traffic",
                              "give the serving slot a weight above 0; to take a server out use drain_slot")
        order = sorted(weights.items(), key=lambda kv: kv[1] <= rec.slot(kv[0]).weight)  # raises first
        for name, w in order:
            if w != rec.slot(name).weight:
                _set(rec, f"set server {BACKEND}/{name} weight {w}")
                rec = _save(_with_slot(rec, rec.slot(name).model_copy(update=dict(weight=w))))
        return rec


def set_traffic(fd: FrontDoor, stable: str, candidate: str, percent: int) -> FrontDoor:
    """A canary step: the candidate gets `percent` of new requests, the stable the rest."""
    if not isinstance(percent, int) or not 0 <= percent <= 100:
        raise BadInput(STAGE, f"front door {fd.name}", f"traffic percent {percent!r} is not an integer in 0..100",
                       "use canary steps between 0 and 100")
    if stable == candidate:
        raise BadInput(STAGE, f"front door {fd.name}", "stable and candidate are the same slot", "name both slots")
    return set_weights(fd, {stable: 100 - percent, candidate: percent})


def drain_slot(fd: FrontDoor, slot: str, timeout_s: float = 300.0, force: bool = True,
               allow_empty: bool = False, poll_s: float = 0.1) -> DrainResult:
    """Take a server out: no new requests from now, in-flight ones (long streams too) finish;
    when its current sessions reach 0, or at the timeout, the slot goes to maintenance and is
    empty again. At the timeout `force=True` cuts what still runs; `force=False` leaves the slot
    draining (drained=False) for the caller to decide. Refuses to drain the last slot taking
    traffic unless allow_empty (stopping the name)."""
    with _locked(fd.path):
        rec = _live(fd)
        s = rec.slot(slot)
        if s.server is None:
            return DrainResult(slot=s.name, server=None, drained=True, forced=False, sessions_left=0, waited_s=0.0)
        if not allow_empty and s.state == "ready":
            figs = read_figures(rec).slots
            others = [o for o in rec.slots if o.name != slot and o.server and o.state == "ready" and o.weight > 0
                      and figs[o.name].up]
            if not others:
                raise StageFailed(STAGE, f"slot {slot} of front door {rec.name}",
                                  f"draining {s.server.url} would leave no server taking traffic",
                                  "give the other slot its weight first (set_traffic ... 100), or pass allow_empty")
        if s.state != "drain":
            _set(rec, f"set server {BACKEND}/{slot} state drain")
            rec = _save(_with_slot(rec, s.model_copy(update=dict(state="drain"))))
    t0 = time.monotonic()
    left = 0
    while True:
        f = read_figures(rec).slots[slot]
        left = f.current_sessions + f.queued
        if left == 0 or time.monotonic() - t0 >= timeout_s:
            break
        time.sleep(poll_s)
    waited = time.monotonic() - t0
    if left and not force:
        return DrainResult(slot=s.name, server=s.server, drained=False, forced=False, sessions_left=left,
                           waited_s=waited)
    with _locked(fd.path):
        rec = _live(fd)
        now = rec.slot(slot)
        if now.server == s.server and now.server is not None:
            _set(rec, f"set server {BACKEND}/{slot} state maint")
            if left:
                _set(rec, f"shutdown sessions server {BACKEND}/{slot}")
            _set(rec, f"set server {BACKEND}/{slot} weight 0")
            _save(_with_slot(rec, Slot(name=s.name)))
    return DrainResult(slot=s.name, server=s.server, drained=left == 0, forced=bool(left), sessions_left=left,
                       waited_s=waited)


def read_figures(fd: FrontDoor) -> FrontDoorFigures:
    """Per-slot health, weight and counters from HAProxy (`show stat`); starts nothing."""
    rec = _read(fd.path) or fd
    rows = _show_stat(rec)
    slots = {}
    for s in rec.slots:
        r = rows.get(s.name, {})
        status = r.get("status", "")
        check = " ".join(x for x in (r.get("check_status", ""), r.get("check_code", ""), r.get("check_desc", ""))
                         if x).strip()
        slots[s.name] = SlotFigures(
            slot=s.name, server=s.server, state=s.state, status=status,
            up=status.startswith("UP") or status == "DRAIN",
            weight=_int(r.get("weight")), current_sessions=_int(r.get("scur")), queued=_int(r.get("qcur")),
            total_sessions=_int(r.get("stot")), requests=_int(r.get("req_tot")) or _int(r.get("lbtot")),
            responses={k: _int(r.get(f"hrsp_{k}")) for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")},
            connect_errors=_int(r.get("econ")), response_errors=_int(r.get("eresp")), retries=_int(r.get("wretr")),
            redispatches=_int(r.get("wredis")), client_aborts=_int(r.get("cli_abrt")),
            server_aborts=_int(r.get("srv_abrt")), check=check,
        )
    fe = rows.get("FRONTEND", {})
    return FrontDoorFigures(
        name=rec.name, pid=rec.pid, at=time.time(), requests=_int(fe.get("req_tot")),
        current_sessions=_int(fe.get("scur")),
        responses={k: _int(fe.get(f"hrsp_{k}")) for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")},
        slots=slots,
    )


def describe(store_uri: str, name: str) -> FrontDoorStatus | None:
    """The front door of `name` for `llmship status`; None when it has none. Starts nothing."""
    rec = load_frontdoor(store_uri, name)
    if rec is None:
        return None
    running = _running(rec)
    figs = None
    if running:
        with contextlib.suppress(StageFailed):
            figs = read_figures(rec).slots
    slots = []
    for s in rec.slots:
        f = figs.get(s.name) if figs else None
        slots.append(SlotStatus(slot=s.name, server=s.server.url if s.server else None, weight=s.weight, state=s.state,
                                status=(f.status if f else ("stopped" if not running else "unknown")),
                                current_sessions=f.current_sessions if f else None))
    return FrontDoorStatus(name=rec.name, url=rec.url, pid=rec.pid if running else None, running=running,
                           since=rec.started, dir=rec.dir, log_path=str(rec.log_path), slots=tuple(slots))


def stop_frontdoor(store_uri: str, name: str, forget: bool = True) -> bool:
    """Stop the front door of `name` (the backends are the caller's to stop). `forget` removes
    the record, so the next ensure starts with empty slots. True if HAProxy was running."""
    d = frontdoor_dir(store_uri, name)
    if not d.is_dir():
        return False
    with _locked(d):
        rec = _read(d)
        if rec is None:
            return False
        was = _running(rec)
        if was:
            _stop_pid(rec.pid)
        rec.socket_path.unlink(missing_ok=True)
        rec.pid_path.unlink(missing_ok=True)
        if forget:
            rec.record_path.unlink(missing_ok=True)
        else:
            _save(rec.model_copy(update=dict(pid=None)))
        return was
