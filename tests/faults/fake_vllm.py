"""A stand-in for `python -m vllm.entrypoints.openai.api_server` with vLLM's process tree.

Run as LLMSHIP_VLLM_PYTHON (through a small wrapper script), it takes vLLM's arguments, forks an
"EngineCore" child that forks a "Worker" grandchild (as vLLM does; both sleep, holding nothing
real), and answers /health, /v1/models and /v1/completions on --host/--port. Killing the API
server leaves both children running with another parent, as a real vLLM's do.

With FAKE_VLLM_STALL_ONCE=<path> and no file there yet, it creates the file and then sits silent
(its EngineCore forked, nothing listening), as a start that stalls does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _child(role: str, then=None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            sys.argv[0] = f"fake-vllm::{role}"
            if then:
                then()
            signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
            while True:
                time.sleep(3600)
        finally:
            os._exit(0)
    return pid


def main() -> None:
    argv = sys.argv[1:]
    if argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]:
        argv = argv[2:]
    ap = argparse.ArgumentParser()
    ap.add_argument("--served-model-name", default="model")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args, _ = ap.parse_known_args(argv)
    _child("EngineCore", then=lambda: _child("Worker"))
    stall_once = os.environ.get("FAKE_VLLM_STALL_ONCE")
    if stall_once and not os.path.exists(stall_once):
        open(stall_once, "w").close()
        while True:
            time.sleep(3600)
    name = args.served_model_name

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, doc: dict) -> None:
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self._send({})
            elif self.path == "/v1/models":
                self._send({"data": [{"id": name}]})
            else:
                self.send_error(404)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self._send({"choices": [{"text": "ok", "index": 0}]})

    ThreadingHTTPServer((args.host, args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
