"""The README's table of exit codes, each code produced by one of the causes it lists."""

from __future__ import annotations

import os
import re

import pytest
from conftest import ROOT, run_cli

CAUSES = {
    0: ("published", [], {}),
    1: ("more rejects than --max-rejects", ["--max-rejects", "0"], {}),
    2: ("an unknown format", ["-f", "xml"], {}),
    3: ("not a SQLite file", [], {"archive": "not-sqlite"}),
    4: ("--out is a file", [], {"out": "file"}),
    130: ("Ctrl-C", ["--jobs", "1"], {"signal": "SIGINT"}),
    143: ("SIGTERM", ["--jobs", "1"], {"signal": "SIGTERM"}),
    129: ("SIGHUP", ["--jobs", "1"], {"signal": "SIGHUP"}),
}


def test_the_readme_lists_these_codes():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("Exit codes:", 1)[1].split("\n\n", 2)[1]
    assert {int(c) for c in re.findall(r"^\| (\d+) \|", table, flags=re.M)} == set(CAUSES)


@pytest.mark.parametrize("code", list(CAUSES))
def test_each_code(code, archive_20k, tmp_path):
    _, args, how = CAUSES[code]
    archive = archive_20k
    if how.get("archive") == "not-sqlite":
        archive = tmp_path / "notes.db"
        archive.write_text("not a database")
    out = tmp_path / "out"
    if how.get("out") == "file":
        out.write_text("a file")
    env = dict(os.environ)
    if "signal" in how:  # delivered at the third page (tests/killable_cli.py)
        env.update(PIPELINE_KILL_AT="posts.page=3", PIPELINE_KILL_SIGNAL=how["signal"])
    r = run_cli("run", "export", archive, "--out", out, "-q", "--batch-bytes", "1M", *args, env=env)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr
    if code in (130, 143, 129):
        assert "nothing was published" in r.stderr and not out.exists()
        assert not list(tmp_path.glob(".out.staging-*"))
