"""--log-format json: one JSON event per line, progress on a timer even when the source is slow."""

from __future__ import annotations

import io
import json
import os
import time
from datetime import datetime

from conftest import run_cli
from oracle import expected_records

import pipeline
from pipeline import source as source_module
from pipeline.progress import JsonLog, JsonProgress


def _events(stderr: str) -> list[dict]:
    lines = stderr.strip().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) for e in events)
    for e in events:
        datetime.fromisoformat(e["ts"].replace("Z", "+00:00"))
    assert len({e["run_id"] for e in events}) == 1
    return events


def test_json_log_of_a_run(fixture_archive, tmp_path):
    r = run_cli(
        "run", "export", fixture_archive, "--out", tmp_path / "out", "--log-format", "json",
        env={**os.environ, "PIPELINE_PROGRESS_INTERVAL": "0.01"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = _events(r.stderr)
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
    end = events[-1]
    want = {t: len(expected_records(str(fixture_archive), t).objects) for t in ("posts", "likes", "follows")}
    assert end["status"] == "published" and end["exit_code"] == 0 and end["records"] == want
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert end["rejects"] == manifest["reject_count"]
    assert end["bytes"] == sum(f["size_bytes"] for f in manifest["files"])
    phases = [(e["stream"], e["phase"]) for e in events if e["event"] == "stream_phase"]
    for name in want:
        mine = [p for s, p in phases if s == name]
        assert mine[0] == "converting" and mine[-1] == "done"
    assert any(e["event"] == "progress" for e in events)


def test_json_log_of_a_failure(tmp_path):
    r = run_cli("run", "export", tmp_path / "missing.db", "--out", tmp_path / "out", "--log-format", "json")
    assert r.returncode == 3
    events = _events(r.stderr)
    assert [e["event"] for e in events] == ["run_start", "run_end"]
    assert events[-1]["status"] == "failed" and events[-1]["exit_code"] == 3
    assert "archive not found" in events[-1]["error"]


def test_progress_keeps_ticking_while_the_source_is_slow(fixture_archive, tmp_path, monkeypatch):
    """Each page takes 0.6 s: progress events still come every interval (0.2 s here; 5 s by default)."""
    pages = source_module.RecordSource.pages

    def slow_pages(self):
        for page in pages(self):
            time.sleep(0.6)
            yield page

    monkeypatch.setattr(source_module.RecordSource, "pages", slow_pages)
    stream = io.StringIO()
    log = JsonLog(stream)
    started = time.monotonic()
    pipeline.export(fixture_archive, tmp_path / "out", formats=["csv"], progress=JsonProgress(log, 0.2), jobs=1)
    took = time.monotonic() - started
    assert took > 1.5  # three streams, a slow page each at least
    ticks = [
        datetime.fromisoformat(e["ts"].replace("Z", "+00:00")).timestamp()
        for e in map(json.loads, stream.getvalue().splitlines())
        if e["event"] == "progress"
    ]
    assert len(ticks) >= took / 0.2 * 0.7
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert max(gaps) < 0.2 + 0.25


def test_default_interval_is_five_seconds():
    assert JsonProgress(JsonLog(io.StringIO()))._interval == 5.0
