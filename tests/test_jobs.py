"""--jobs: the same bytes whatever the parallelism; one failing stream fails the run at once; the bytes
in flight bounded over all streams."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

import pipeline
from pipeline.tuning import InFlight, Tuning


def _data(out: Path) -> dict[str, bytes]:
    # metrics.json (times, memory) differs on every run by nature
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "metrics.json"
    }


def test_jobs_give_identical_bytes(archive_20k, tmp_path):
    outputs = []
    for jobs in (1, 4):
        out = tmp_path / f"jobs{jobs}"
        pipeline.export(archive_20k, out, formats=["csv", "json", "ndjson"], ops=True, jobs=jobs)
        outputs.append(_data(out))
    a, b = outputs
    assert sorted(a) == sorted(b) and len(a) > 20
    ma, mb = json.loads(a.pop("manifest.json")), json.loads(b.pop("manifest.json"))
    ma.pop("exported_at"), mb.pop("exported_at")
    assert ma == mb
    assert a == b
    assert {"posts.csv", "likes.json", "follows.ndjson", "rejects.ndjson"} <= set(a)
    assert any(name.startswith("ops/") for name in a)


def _corrupt_table(src: Path, dst: Path, table: str) -> None:
    """Copy ``src`` with the root page of ``table`` overwritten: reading it fails, the rest reads."""
    shutil.copy(src, dst)
    con = sqlite3.connect(dst)
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    con.close()
    with open(dst, "r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(os.urandom(page_size))


ARGS = ("-f", "csv", "-f", "json", "-f", "ndjson", "--ops", "--jobs", "4", "-q")


@pytest.fixture(scope="module")
def full_run(archive_150k, tmp_path_factory) -> float:
    """Seconds a whole healthy export of the 150k archive takes here (the yardstick: a fixed
    limit in seconds would fail on a slower or busier machine)."""
    started = time.monotonic()
    ok = run_cli("run", "export", archive_150k, "--out", tmp_path_factory.mktemp("full") / "ok", *ARGS)
    assert ok.returncode == 0, ok.stderr
    return time.monotonic() - started


@pytest.mark.parametrize("table", ["follows", "ops"])
def test_one_failing_stream_fails_the_run_promptly(archive_150k, full_run, tmp_path, table):
    db = tmp_path / "corrupt.db"
    _corrupt_table(archive_150k, db, table)
    out = tmp_path / "out"
    pipeline.export(ROOT / "data/fixtures/archive.db", out, formats=["csv"], types=["follows"])
    before = _data(out)
    started = time.monotonic()
    proc = run_cli("run", "export", db, "--out", out, *ARGS)
    failed_after = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"({table}" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert _data(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # The broken table fails as its stream starts (~0.3 s in, of a ~2.5 s run here); the
    # healthy streams are stopped at their next page instead of running on.
    assert failed_after < full_run / 2, (failed_after, full_run)


def _overlap(monkeypatch) -> dict[str, int]:
    """Spy on the page conversions: ``most`` pages whose conversion had begun and whose
    converted rows the stream had not yet taken, at once (each conversion made slow enough
    for two to overlap whenever they are let)."""
    import pipeline.convert as convert

    seen, lock = {"now": 0, "most": 0}, threading.Lock()
    real = convert._convert

    def slow(rtype, page, formats):
        with lock:
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])
        time.sleep(0.02)
        return real(rtype, page, formats)

    def taken(costs, future, item):  # the stream takes a result: that page is out of flight
        with lock:
            seen["now"] -= 1
        yield from hand(costs, future, item)

    hand = convert._Costs.hand
    monkeypatch.setattr(convert, "_convert", slow)
    monkeypatch.setattr(convert._Costs, "hand", taken)
    return seen


def _flights(monkeypatch) -> list[InFlight]:
    """The run's ``InFlight``, kept for the test to look at once the export is done."""
    import pipeline.run

    made: list[InFlight] = []

    class Kept(InFlight):
        def __init__(self, limit: int):
            super().__init__(limit)
            made.append(self)

    monkeypatch.setattr(pipeline.run, "InFlight", Kept)
    return made


@pytest.mark.parametrize("limit", [1, None])
def test_pages_in_flight_are_bounded_by_bytes_over_all_streams(archive_20k, tmp_path, monkeypatch, limit):
    """``Tuning.in_flight_bytes`` bounds the pages converting or converted and not yet taken,
    over every stream of the run (four at once here): at a limit of 1 byte one page at a
    time, yet the same files; without it, pages overlap (so the spy can see a breach)."""
    seen = _overlap(monkeypatch)
    flights = _flights(monkeypatch)
    tuning = Tuning(page_rows=200, in_flight_bytes=1 if limit else 2**40)  # the ops too in several pages
    out = tmp_path / "out"
    result = pipeline.export(archive_20k, out, formats=["csv", "json"], ops=True, jobs=4, tuning=tuning)
    [flight] = flights
    assert flight.held == 0  # every page's cost given back, the ops' too (their pages come in order)
    if limit:
        assert seen["most"] == 1
        reference = tmp_path / "reference"
        pipeline.export(archive_20k, reference, formats=["csv", "json"], ops=True, jobs=4)
        got, want = _data(out), _data(reference)
        for data in (got, want):
            data.pop("manifest.json"), data.pop("metrics.json", None)
        assert got == want
    else:
        assert seen["most"] >= 2
    assert result.metrics["peak_in_flight_bytes"] > 0


def test_in_flight_lets_one_page_through_alone_whatever_its_size():
    flight = InFlight(100)
    assert flight.try_take(500)  # nothing else in flight: a page larger than the limit goes alone
    assert not flight.try_take(1)
    flight.give(500)
    assert flight.try_take(60) and flight.try_take(40) and not flight.try_take(1)
    flight.grow(30)  # converted rows of what is already in are not refused
    assert (flight.held, flight.peak) == (130, 500)
    flight.give(130)
    assert flight.held == 0 and flight.try_take(100)
