"""Results that survive a restart: a bounded SQLite table of JSON values with checksums.

Keys are opaque strings (the evaluation service hashes the model's weights, the job, the evaluation
set and the code version into them), so a stale entry is simply never asked for. A row whose
checksum or JSON does not hold up is deleted and reported as missing: a corrupt value is never shown.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from prunekit.errors import InvalidArgumentError

log = logging.getLogger(__name__)
MAX_ROWS = 200_000  # a full 0.01 grid of both scopes is 200 rows per configuration


def default_path() -> Path:
    """``$PRUNEKIT_CACHE_DIR/results.sqlite3``, else ``~/.cache/prunekit/results.sqlite3``."""
    root = os.environ.get("PRUNEKIT_CACHE_DIR") or Path.home() / ".cache" / "prunekit"
    return Path(root) / "results.sqlite3"


def digest(*parts: object) -> str:
    """A stable sha256 of JSON-serialisable parts (the store's keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _checksum(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ResultStore:
    """A key -> JSON-object store on disk, at most ``max_rows`` rows (the oldest go first)."""

    def __init__(self, path: Path | str | None = None, max_rows: int = MAX_ROWS) -> None:
        if max_rows <= 0:
            raise InvalidArgumentError(f"max_rows must be positive, got {max_rows}")
        self.path = Path(path) if path is not None else default_path()
        self.max_rows = max_rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT, checksum TEXT, created REAL)"
            )

    def get(self, key: str) -> dict | None:
        """The stored object, or None when absent or corrupt (a corrupt row is deleted)."""
        try:
            with self._lock:
                row = self._db.execute("SELECT value, checksum FROM results WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:
            log.warning("result store %s unreadable: %s", self.path, exc)
            return None
        if row is None:
            return None
        value = self._decode(*row)
        if value is None:
            log.warning("ignoring a corrupt result-store entry %s", key[:12])
            self.delete(key)
        return value

    @staticmethod
    def _decode(text, checksum) -> dict | None:
        if not isinstance(text, str) or _checksum(text) != checksum:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict) -> None:
        text = json.dumps(value, sort_keys=True)
        try:
            with self._lock, self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", (key, text, _checksum(text), time.time())
                )
                self._evict()
        except sqlite3.DatabaseError as exc:  # a full disk or a broken file must not take the app down
            log.warning("could not write to the result store %s: %s", self.path, exc)

    def _evict(self) -> None:
        (rows,) = self._db.execute("SELECT COUNT(*) FROM results").fetchone()
        if rows > self.max_rows:
            drop = rows - self.max_rows + self.max_rows // 10
            self._db.execute(
                "DELETE FROM results WHERE key IN (SELECT key FROM results ORDER BY created LIMIT ?)", (drop,)
            )

    def delete(self, key: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM results WHERE key = ?", (key,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
