"""Screenshots of a promotion's artifacts in the Prefect UI, for the README (docs/img/*.png).

    .venv/bin/python docs/screenshots.py                 # promote the example twice (the second is a canary)
    .venv/bin/python docs/screenshots.py --no-canary     # only the first promotion
    .venv/bin/python docs/screenshots.py --out /tmp/img --keep

What it does, as a platform engineer would look at a promotion:
1. starts `prefect server start` (SQLite, UI on) on a free loopback port in a fresh PREFECT_HOME;
2. writes the tiny example Llama (two seeds) and promotes `examples/tiny-local.yaml` with
   `llmship promote` against that server: the first promotion load-tests the model and makes
   it stable; the second promotes the other seed through the canary;
3. stops the served models, then opens each artifact's page in the Prefect UI in Debian's
   chromium, headless (`--screenshot` with a virtual time budget, which lets the UI's
   JavaScript fetch from the API and render before the picture is taken), and saves PNGs.

Chromium's own `--screenshot` needs no driver: every page wanted here has its own URL
(`/artifacts/artifact/<id>`, `/runs/flow-run/<id>`), so nothing has to be clicked.
Needs /usr/bin/chromium (`apt-get install -y chromium`) and about 3-6 minutes (vLLM on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port, serve  # noqa: E402  (the same server helpers the tests use)

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
# artifact type -> browser window (width, height): tall enough for the whole artifact
WINDOW = {"image": (1400, 1000), "markdown": (1400, 1150), "table": (1800, 950)}


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        sys.exit("chromium is not installed: apt-get install -y chromium")
    return found


def screenshot(url: str, out: Path, size: tuple[int, int], profile_root: Path, budget_ms: int = 20000) -> Path:
    """One page, rendered until the UI settles (virtual time), saved as a PNG."""
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=profile_root))  # a fresh profile each time
    cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
           f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url]
    subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    shutil.rmtree(profile, ignore_errors=True)
    if not out.is_file() or out.stat().st_size < 5000:
        raise RuntimeError(f"chromium wrote no screenshot of {url}")
    return out


def promote(spec: dict, work: Path, label: str, env: dict) -> dict:
    path = work / f"{label}.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = work / f"{label}.json"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "promote", str(path), "--json-out", str(result)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    print(f"  {label}: exit {proc.returncode} in {time.monotonic() - t0:.0f} s")
    if not result.is_file():
        sys.exit(f"promotion {label} wrote no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def _post(url: str, body: dict) -> list[dict]:
    r = httpx.post(url, json=body, timeout=30)
    r.raise_for_status()
    return r.json()


def flow_runs(api: str) -> list[dict]:
    runs = _post(f"{api}/flow_runs/filter", {"flows": {"name": {"any_": ["promote_model"]}}})
    return sorted(runs, key=lambda r: r.get("start_time") or r["created"])


def artifacts_of(api: str, run_id: str) -> list[dict]:
    arts = _post(f"{api}/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    return sorted(arts, key=lambda a: a["created"])


def promote_examples(work: Path, env: dict, canary: bool) -> None:
    """The example spec, promoted once (becomes stable), then with another seed through the canary."""
    from tasks.example_model import write_example_model

    store = work / "store"
    base = yaml.safe_load((ROOT / "examples" / "tiny-local.yaml").read_text())
    base["storage"]["uri"] = str(store)
    print("promoting the example (vLLM on CPU: a minute or more each)")
    try:
        for label, seed in [("first", 0)] + ([("canary", 1)] if canary else []):
            model = write_example_model(work / "models" / label, seed=seed)
            spec = json.loads(json.dumps(base))
            spec["model"]["source"] = f"file://{model}"
            r = promote(spec, work, label, env)
            print(f"  {label}: {r['outcome']} ({'; '.join(s['stage'] + ' ' + s['state'] for s in r['stages'])})")
    finally:
        subprocess.run([sys.executable, "-m", "flows.cli", "stop", "--store", str(store)], cwd=ROOT, env=env,
                       capture_output=True, timeout=300)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--no-canary", action="store_true", help="only the first promotion (no canary artifacts)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (server DB, logs, specs)")
    ap.add_argument("--shots-only", type=Path, metavar="WORK",
                    help="no promotion: reopen a work folder kept by --keep and take the screenshots again")
    args = ap.parse_args()
    chromium()

    work = args.shots_only or Path(tempfile.mkdtemp(prefix="llmship-screenshots-"))
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server_env = {**os.environ, "PREFECT_HOME": str(work / "prefect-server"), "PREFECT_API_URL": "",
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "true",
                  "PREFECT_UI_API_URL": api}  # the UI's JavaScript calls this API
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(work / "prefect-client"),
           "LLMSHIP_CACHE": str(work / "cache"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    print(f"work folder {work}; Prefect UI at http://127.0.0.1:{port}")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with serve(cmd, api + "/health", work / "prefect-server.log", timeout_s=180, env=server_env):
            if not args.shots_only:
                promote_examples(work, env, canary=not args.no_canary)
            shots = take_all(api, f"http://127.0.0.1:{port}", args.out, work)
    finally:
        if not (args.keep or args.shots_only):
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(f"wrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}" for p in shots))


def take_all(api: str, ui: str, out: Path, work: Path) -> list[Path]:
    """The flow run pages and every artifact of each promotion, named after the artifact key."""
    shots = []
    runs = flow_runs(api)
    for i, run in enumerate(runs):
        label = "first" if i == 0 else "canary"
        shots.append(screenshot(f"{ui}/runs/flow-run/{run['id']}", out / f"{label}-flow-run.png", (1400, 1000), work))
        for art in artifacts_of(api, run["id"]):
            if not art.get("key"):
                continue  # Prefect's own result records, not something llmship published
            path = out / f"{label}-{art['key']}.png"
            shots.append(screenshot(f"{ui}/artifacts/artifact/{art['id']}", path, WINDOW.get(art["type"], (1400, 1000)),
                                    work))
    return shots


if __name__ == "__main__":
    main()
