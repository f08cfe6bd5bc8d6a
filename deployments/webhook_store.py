"""The receiver's delivery log: dedup by delivery id, and an outbox of events to emit.

One SQLite file. A delivery is claimed (INSERT, unique on its key) inside the request, with
the Prefect events it should emit; the emitter sends pending rows and marks them emitted.
So a duplicate is seen across restarts, and an event accepted with 202 is sent even if the
receiver stops before sending it (it is sent at the next start).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    key TEXT PRIMARY KEY,          -- mlflow:<delivery id> or hf:<repo>:<ref>:<sha>
    provider TEXT NOT NULL,
    received_at REAL NOT NULL,
    status TEXT NOT NULL,          -- pending, emitted, ignored
    summary TEXT NOT NULL,
    events TEXT NOT NULL,          -- JSON list of Prefect events
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    emitted_at REAL
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries(status) WHERE status = 'pending';
"""


class DeliveryStore:
    def __init__(self, path: str | Path, retention_s: float = 14 * 24 * 3600):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash
        self._db.executescript(SCHEMA)
        # keep ids far longer than the 5-minute freshness window, so a replay is always a duplicate
        self._db.execute("DELETE FROM deliveries WHERE received_at < ? AND status != 'pending'", (time.time() - retention_s,))

    def claim(self, key: str, provider: str, summary: str, events: list[dict]) -> bool:
        """Record a new delivery; False when the key was seen before."""
        status = "pending" if events else "ignored"
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO deliveries (key, provider, received_at, status, summary, events) VALUES (?,?,?,?,?,?)",
                (key, provider, time.time(), status, summary, json.dumps(events)),
            )
            return cur.rowcount == 1

    def pending(self, limit: int = 50) -> list[tuple[str, list[dict]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT key, events FROM deliveries WHERE status = 'pending' ORDER BY received_at LIMIT ?", (limit,)
            ).fetchall()
        return [(k, json.loads(e)) for k, e in rows]

    def mark_emitted(self, keys: list[str]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE deliveries SET status='emitted', emitted_at=?, last_error=NULL WHERE key=?",
                                 [(now, k) for k in keys])
            self._db.execute("COMMIT")

    def mark_failed(self, keys: list[str], error: str) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE deliveries SET attempts=attempts+1, last_error=? WHERE key=?",
                                 [(error[:500], k) for k in keys])
            self._db.execute("COMMIT")

    def get(self, key: str) -> dict | None:
        with self._lock:
            self._db.row_factory = sqlite3.Row
            try:
                row = self._db.execute("SELECT * FROM deliveries WHERE key=?", (key,)).fetchone()
            finally:
                self._db.row_factory = None
        return dict(row) if row else None

    def count(self, status: str | None = None) -> int:
        with self._lock:
            if status is None:
                return self._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM deliveries WHERE status=?", (status,)).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
