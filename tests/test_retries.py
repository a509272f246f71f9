"""A locked archive is retried with backoff; other errors fail at once."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import adbc_driver_manager as adbc
import pytest
from conftest import run_cli
from test_export import check_export

import pipeline
from pipeline import source


def _locked(e: str = "[SQLite] Failed to prepare query: database is locked") -> adbc.Error:
    return adbc.OperationalError(e, status_code=adbc.AdbcStatusCode.IO)


def test_retrying_backs_off_then_succeeds(monkeypatch, caplog):
    sleeps: list[float] = []
    monkeypatch.setattr(source._time, "sleep", sleeps.append)
    calls = iter([_locked(), _locked(), _locked(), "rows"])

    def fn():
        item = next(calls)
        if isinstance(item, Exception):
            raise item
        return item

    with caplog.at_level(logging.WARNING, logger="pipeline"):
        assert source.retrying(fn, 5, "posts, planning") == "rows"
    assert sleeps == [0.1, 0.2, 0.4]
    assert [r.getMessage() for r in caplog.records] == [
        f"retry {i}/5 in {d} s: [SQLite] Failed to prepare query: database is locked (posts, planning)"
        for i, d in ((1, "0.1"), (2, "0.2"), (3, "0.4"))
    ]


def test_retrying_gives_up_after_the_budget(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(source._time, "sleep", sleeps.append)

    def fn():
        raise _locked()

    with pytest.raises(adbc.Error, match="database is locked"):
        source.retrying(fn, 3, "x")
    assert sleeps == [0.1, 0.2, 0.4]


@pytest.mark.parametrize("message", ["database disk image is malformed", "no such table: posts", "disk I/O error"])
def test_permanent_errors_are_not_retried(monkeypatch, message):
    monkeypatch.setattr(source._time, "sleep", lambda s: pytest.fail("retried a permanent error"))
    calls = []

    def fn():
        calls.append(1)
        raise _locked(message)

    with pytest.raises(adbc.Error, match=message):
        source.retrying(fn, 5, "x")
    assert calls == [1]


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process takes an exclusive lock on ``db`` (rollback journal) for ``seconds``."""
    code = (
        "import sqlite3, sys, time\n"
        f"con = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
        "con.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        f"time.sleep({seconds})\n"
        "con.execute('COMMIT')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_export_waits_out_a_2s_lock(rollback_archive, tmp_path):
    holder = _hold_lock(rollback_archive, 2.0)
    try:
        started = time.monotonic()
        r = run_cli("run", "export", rollback_archive, "--out", tmp_path / "out", "-f", "csv", "-f", "json")
        waited = time.monotonic() - started
    finally:
        holder.wait(timeout=30)
    assert r.returncode == 0, r.stderr
    retries = [line for line in r.stderr.splitlines() if line.startswith("pipeline: warning: retry ")]
    assert retries and all("database is locked" in line for line in retries), r.stderr
    assert waited > 1.5
    check_export(tmp_path / "out", rollback_archive, ["csv", "json"], ("posts", "likes", "follows"))


def test_lock_past_the_retries_fails_clearly(rollback_archive, tmp_path):
    holder = _hold_lock(rollback_archive, 6.0)
    try:
        r = run_cli("run", "export", rollback_archive, "--out", tmp_path / "out", "--retries", "2")
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("pipeline: error: ") and "database is locked" in last
    assert "gave up after 2 retries" in last and "Traceback" not in r.stderr
    assert len([x for x in r.stderr.splitlines() if x.startswith("pipeline: warning: retry ")]) == 2
    assert not (tmp_path / "out").exists()


def test_a_retry_wait_ends_when_the_run_is_cancelled():
    import threading

    from pipeline.errors import Cancelled

    cancel = threading.Event()

    def fn():
        raise _locked()

    threading.Timer(0.2, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        source.retrying(fn, 10, "x", cancel=cancel)  # 0.1 + 0.2 + 0.4 + ... without the cancel
    assert time.monotonic() - started < 1.0


def test_waits_are_capped(monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(source._time, "sleep", sleeps.append)

    def fn():
        raise _locked()

    with pytest.raises(adbc.Error):
        source.retrying(fn, 8, "x")
    assert sleeps == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    assert source.gave_up(8) == " (gave up after 8 retries over 9.1 s)"


def test_only_the_first_line_of_an_error_counts():
    sql_mentions_it = "[SQLite] no such table: x\nquery: SELECT name FROM pragma_table_info('database is locked')"
    assert not source.transient(_locked(sql_mentions_it))
    assert source.transient(_locked("[SQLite] Failed to step query: database table is locked\nquery: SELECT 1"))


def test_a_failed_open_leaves_no_handle(rollback_archive):
    import gc
    import os

    def open_files() -> int:
        return sum(
            1 for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == str(rollback_archive)
        )

    holder = _hold_lock(rollback_archive, 5.0)
    try:
        for _ in range(3):
            with pytest.raises(pipeline.ExportError, match="database is locked"):
                pipeline.Archive(rollback_archive, retries=0)
        gc.collect()
        assert open_files() == 0
    finally:
        holder.kill()
        holder.wait()
