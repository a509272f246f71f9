"""The command does not import pandas: pyarrow would, only to ask whether a value is a
pandas object, the first time it converts Python values (0.27 s of CPU per process)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import FIXTURE, ROOT

pytest.importorskip("pandas")  # where pandas is not installed, pyarrow never imports it anyway
pytest.importorskip("numpy")  # nor without numpy: pyarrow asks only then

RUN_CLI = """
import runpy, sys
sys.argv = ["cli.py", *sys.argv[1:]]
try:
    runpy.run_path("cli.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("pandas" in sys.modules)
"""


def _python(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.strip().splitlines()[-1]


def test_pyarrow_without_the_probe_still_converts_and_reaches_pandas_when_asked():
    code = """
import sys
from pipeline.startup import skip_pandas_probe
skip_pandas_probe()
import pyarrow as pa
assert pa.array([1, None]).to_pylist() == [1, None] and pa.scalar("x").as_py() == "x"
assert pa.table({"a": [1.5]}).column(0).to_pylist() == [1.5]
before = "pandas" in sys.modules
frame = pa.table({"a": [1, 2]}).to_pandas()
print(before, type(frame).__module__.split(".")[0], list(frame["a"]))
"""
    assert _python(code) == "False pandas [1, 2]"


def test_without_the_probe_pyarrow_imports_pandas():
    """The cost being avoided is real here: plain pyarrow imports pandas on its first conversion."""
    assert _python("import sys, pyarrow as pa; pa.array([0]); print('pandas' in sys.modules)") == "True"


def test_an_export_by_the_command_does_not_import_pandas(tmp_path):
    out = tmp_path / "out"
    args = ["run", "export", str(FIXTURE), "-o", str(out), "-f", "csv", "-f", "json", "-f", "parquet", "--ops", "-q"]
    assert _python(RUN_CLI, *args) == "False"
    assert (out / "posts.parquet").is_file()
