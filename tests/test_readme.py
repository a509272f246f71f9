"""The README's library example runs as written and agrees with the CLI's files."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

from conftest import ROOT

import pipeline


def test_readme_library_snippet(tmp_path, fixture_archive):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Library", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)[:1]
    assert "from pipeline import" in code
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
    pipeline.export(fixture_archive, ref, formats=["csv", "ndjson"], since="2024-01-01")
    assert (made / "posts.csv").read_bytes() == (ref / "posts.csv").read_bytes()
    assert (made / "posts.ndjson").read_bytes() == (ref / "posts.ndjson").read_bytes()
    assert "posts.csv" in printed.getvalue()
