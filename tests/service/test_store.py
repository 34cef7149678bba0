"""The result store can never stop its caller: corrupt, foreign, truncated or locked files, unusable
directories and a full disk each leave a working store (on disk or in memory) and one notice."""

import logging
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from prunekit.service.store import ResultStore

FIXED = 1_700_000_000.0  # the fake clock: the moved-aside name's timestamp is known


def _stamp() -> str:
    import time

    return time.strftime("%Y%m%d-%H%M%S", time.localtime(FIXED))


def _filled(path, rows: int = 50) -> None:
    store = ResultStore(path)
    for i in range(rows):
        store.put(f"k{i}", {"i": i, "pad": "x" * 200})
    store.close()


def _assert_works(store: ResultStore) -> None:
    store.put("fresh", {"ok": 1})
    assert store.get("fresh") == {"ok": 1}


def _corrupt_random(path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _corrupt_truncated(path) -> None:
    _filled(path, 400)
    for side in ("-wal", "-shm"):
        (path.parent / (path.name + side)).unlink(missing_ok=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _corrupt_foreign(path) -> None:
    with sqlite3.connect(path) as db:  # another program's database, with a table of the same name
        db.execute("CREATE TABLE results (id INTEGER, score REAL)")
        db.execute("INSERT INTO results VALUES (1, 0.5)")


def _corrupt_text(path) -> None:
    path.write_text("not a database at all\n" * 100)


@pytest.mark.parametrize("damage", [_corrupt_random, _corrupt_truncated, _corrupt_foreign, _corrupt_text])
def test_a_damaged_file_is_moved_aside_and_a_fresh_store_started(tmp_path, damage, caplog):
    path = tmp_path / "results.sqlite3"
    damage(path)
    before = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="prunekit.service.store"):
        store = ResultStore(path, clock=lambda: FIXED)
    aside = tmp_path / f"results.sqlite3.corrupt-{_stamp()}"
    assert aside.read_bytes() == before  # nothing lost: the old file is kept as it was
    assert not store.in_memory and store.notice and "set aside" in store.notice
    assert str(tmp_path) not in store.notice  # the page's words name no server path
    assert any(str(aside) in r.getMessage() for r in caplog.records)  # the log says where
    _assert_works(store)
    store.close()
    reopened = ResultStore(path)
    assert reopened.get("fresh") == {"ok": 1} and reopened.notice is None


def test_a_healthy_store_has_no_notice(tmp_path):
    _filled(tmp_path / "r.sqlite3")
    store = ResultStore(tmp_path / "r.sqlite3")
    assert store.notice is None and not store.in_memory and store.get("k3")["i"] == 3


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_a_directory_that_cannot_be_used_falls_back_to_memory(tmp_path, where, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    path = (blocker / "cache" / "results.sqlite3") if where == "under-a-file" else "/proc/prunekit-nope/r.sqlite3"
    with caplog.at_level(logging.WARNING, logger="prunekit.service.store"):
        store = ResultStore(path)
    assert store.in_memory and "kept in memory" in store.notice and str(tmp_path) not in store.notice
    assert any("in memory only" in r.getMessage() for r in caplog.records)
    _assert_works(store)


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.readline()
    """
)


def test_a_file_locked_by_another_process_falls_back_to_memory_and_is_left_alone(tmp_path):
    path = tmp_path / "results.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("CREATE TABLE other (x)")
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout.readline().strip() == "locked"
        store = ResultStore(path, timeout=0.2)
        assert store.in_memory and "locked by another process" in store.notice
        _assert_works(store)
        assert not list(tmp_path.glob("*.corrupt-*"))  # a locked file is not damaged: nothing moved
    finally:
        locker.communicate("\n", timeout=30)


def test_writes_on_a_full_disk_are_dropped_with_one_warning(tmp_path, caplog):
    store = ResultStore(tmp_path / "r.sqlite3")
    store.put("before", {"ok": 1})
    (pages,) = store._db.execute("PRAGMA page_count").fetchone()
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own 'database or disk is full'
    with caplog.at_level(logging.WARNING, logger="prunekit.service.store"):
        for i in range(20):
            store.put(f"big{i}", {"pad": "y" * 20_000})  # never raises
    warnings = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert len(warnings) == 1 and "full" in warnings[0].getMessage()
    assert store.get("before") == {"ok": 1} and store.get("big0") is None
