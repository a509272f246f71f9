"""The README's library example runs as written and gives the CLI's files, byte for byte."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

from conftest import ROOT, run_cli


def test_readme_library_snippet_is_the_cli(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Library", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    assert "pipeline.export(" in code
    os.symlink(ROOT / "data", tmp_path / "data")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    made = tmp_path / "exports" / "library-demo"
    ref = tmp_path / "ref"
    archive = ROOT / "data" / "fixtures" / "bskyarchive" / "data" / "archive.db"
    args = ("-f", "csv", "-f", "ndjson", "--types", "posts", "--did", "self", "--since", "2024-01-01", "-q")
    r = run_cli("run", "export", archive, "--out", ref, *args)
    assert r.returncode == 0, r.stderr
    for name in ("posts.csv", "posts.ndjson"):
        assert (made / name).read_bytes() == (ref / name).read_bytes()
    assert "posts.csv" in printed.getvalue() and "posts.ndjson" in printed.getvalue()
