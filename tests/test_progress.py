"""Progress: a plain line at least every interval even when a batch is slow."""

from __future__ import annotations

import io
import re
import time

from pipeline.progress import PlainProgress, Progress, for_terminal


def test_plain_progress_reports_while_nothing_advances():
    out = io.StringIO()
    p = PlainProgress(out, interval=0.05)
    p.start("posts", 1000)
    p.advance(250)
    time.sleep(0.3)  # a slow batch: no advance, lines must still come
    p.stop()
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3
    assert re.fullmatch(r"posts: 250/1,000 records \(25%\), [\d,]+ records/s, ETA \d\d:\d\d:\d\d", lines[-1]), lines[-1]


def test_quiet_and_non_tty_choices():
    assert type(for_terminal(quiet=True)) is Progress
    assert isinstance(for_terminal(quiet=False, stream=io.StringIO()), PlainProgress)


def test_cli_prints_plain_progress_when_not_a_tty(fixture_archive, tmp_path):
    from conftest import run_cli

    proc = run_cli("run", "export", fixture_archive, "--out", tmp_path / "o", "--batch-size", "1",
                   env={**__import__("os").environ, "PIPELINE_PROGRESS_INTERVAL": "0.01"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert any("posts: " in line and "records/s" in line for line in lines[:-1])
    assert lines[-1].startswith("Exported ")
