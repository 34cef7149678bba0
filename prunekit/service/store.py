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


COLUMNS = ("key", "value", "checksum", "created")


class StoreUnusable(Exception):
    """The file at the store's path is not a usable prunekit result store (corrupt or another program's)."""


def _is_locked(exc: sqlite3.Error) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _connect(target: str | Path, timeout: float) -> sqlite3.Connection:
    """An open, checked store: a file that is not an SQLite database, fails its quick check or holds a
    ``results`` table of another shape raises :class:`StoreUnusable`; a lock raises sqlite3's error."""
    db = sqlite3.connect(target, check_same_thread=False, timeout=timeout)
    try:
        _check(db)
    except sqlite3.DatabaseError as exc:
        db.close()
        if isinstance(exc, sqlite3.OperationalError) and _is_locked(exc):
            raise
        raise StoreUnusable(str(exc)) from exc
    except StoreUnusable:
        db.close()
        raise
    return db


def _check(db: sqlite3.Connection) -> None:
    """Read-only checks first, so that another program's file is left exactly as it was."""
    (verdict,) = db.execute("PRAGMA quick_check").fetchone()
    if verdict != "ok":
        raise StoreUnusable(f"quick check failed: {verdict}")
    columns = tuple(row[1] for row in db.execute("PRAGMA table_info(results)"))
    if columns not in ((), COLUMNS):
        raise StoreUnusable(f"a 'results' table with columns {columns}, not a prunekit result store")
    with db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT, checksum TEXT, created REAL)")


class ResultStore:
    """A key -> JSON-object store on disk, at most ``max_rows`` rows (the oldest go first).

    It never stops its caller: a corrupt file (or another program's) is moved aside to
    ``<name>.corrupt-<timestamp>`` and a fresh one created; a directory that cannot be used, or a file
    locked by another process, leaves the store in memory only. Either way ``notice`` says so in words
    fit for a page (no path) and the log says what happened and where. Writes that fail later (a full
    disk) are dropped with one logged warning.
    """

    def __init__(
        self, path: Path | str | None = None, max_rows: int = MAX_ROWS, timeout: float = 5.0, clock=time.time
    ) -> None:
        if max_rows <= 0:
            raise InvalidArgumentError(f"max_rows must be positive, got {max_rows}")
        self.path = Path(path) if path is not None else default_path()
        self.max_rows, self.timeout, self._clock = max_rows, timeout, clock
        self.notice: str | None = None  # shown on the page when the store is not what it should be
        self.in_memory = False
        self._lock = threading.Lock()
        self._warned: set[str] = set()  # 'read', 'write': each failure kind is logged once
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return _connect(self.path, self.timeout)
        except OSError as exc:
            return self._memory(f"its directory cannot be used ({exc.strerror or exc})", exc)
        except StoreUnusable as exc:
            return self._replace_corrupt(exc)
        except sqlite3.Error as exc:  # locked by another process, or a file that cannot be opened
            why = "the file is locked by another process" if _is_locked(exc) else f"the file cannot be opened ({exc})"
            return self._memory(why, exc)

    def _replace_corrupt(self, exc: StoreUnusable) -> sqlite3.Connection:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self._clock()))
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            for suffix in ("-wal", "-shm"):  # a stale write-ahead log belongs to the old file
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.rename(aside.with_name(aside.name + suffix))
            self.path.rename(aside)
            db = _connect(self.path, self.timeout)
        except (OSError, sqlite3.Error, StoreUnusable) as again:
            return self._memory(f"the file is not a usable result store ({exc}) and could not be replaced", again)
        log.warning("result store %s was unusable (%s): moved aside to %s, started a fresh one", self.path, exc, aside)
        self.notice = "The result store was damaged: it was set aside and a fresh one started, so earlier results are measured again."
        return db

    def _memory(self, why: str, exc: BaseException) -> sqlite3.Connection:
        log.warning("result store %s not used: %s (%s); keeping results in memory only", self.path, why, exc)
        self.notice = f"The result store could not be used ({why}): results are kept in memory and lost at restart."
        self.in_memory = True
        db = sqlite3.connect(":memory:", check_same_thread=False)
        _check(db)
        return db

    def get(self, key: str) -> dict | None:
        """The stored object, or None when absent or corrupt (a corrupt row is deleted)."""
        try:
            with self._lock:
                row = self._db.execute("SELECT value, checksum FROM results WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            self._warn_once("read", exc)
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
                    "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)", (key, text, _checksum(text), self._clock())
                )
                self._evict()
        except sqlite3.Error as exc:  # a full disk or a broken file must not take the app down
            self._warn_once("write", exc)

    def _warn_once(self, what: str, exc: sqlite3.Error) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning(
                "could not %s the result store %s: %s (later failures are not logged again)", what, self.path, exc
            )

    def _evict(self) -> None:
        (rows,) = self._db.execute("SELECT COUNT(*) FROM results").fetchone()
        if rows > self.max_rows:
            drop = rows - self.max_rows + self.max_rows // 10
            self._db.execute(
                "DELETE FROM results WHERE key IN (SELECT key FROM results ORDER BY created LIMIT ?)", (drop,)
            )

    def delete(self, key: str) -> None:
        try:
            with self._lock, self._db:
                self._db.execute("DELETE FROM results WHERE key = ?", (key,))
        except sqlite3.Error as exc:
            self._warn_once("write", exc)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
