"""What a process that exists to export does once at its start (the command, export-many's workers).

Not for the library's callers: it changes how pyarrow treats pandas objects for
the rest of the process (see ``skip_pandas_probe``).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType


class _Refused(importlib.abc.MetaPathFinder):
    """Finds ``pandas`` (and its submodules) missing."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "pandas" or fullname.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def skip_pandas_probe() -> None:
    """Make pyarrow take pandas as not installed when it asks whether a value is a pandas
    object, unless pandas is imported already.

    The first time pyarrow converts Python values (``pa.array``, ``pa.scalar``: every
    query's parameters) it imports pandas, where pandas and numpy are installed, only
    to ask whether the values are a pandas Series: 0.27 s of CPU per process on this
    machine, a tenth of exporting 300k posts. An export never hands it one. pyarrow
    asks once per process (twice: its array-like check, then its type
    inference); here it is asked while ``import pandas`` fails, and
    keeps those answers. Where it needs pandas (``to_pandas()``) it imports it
    again then; but a pandas object given to ``pa.array`` later in this process is read
    as a plain sequence, and pandas' own missing values (``NaT``, ``NA``) stay unknown to
    pyarrow's converters: for processes of our own, which never hand pyarrow pandas
    objects nor convert to pandas.
    """
    if "pandas" in sys.modules:
        return
    import pyarrow as pa  # imported first: only its question about pandas is answered

    refused = _Refused()
    try:
        sys.meta_path.insert(0, refused)
        pa.array([0])  # asks twice: the array-like check, then the type inference's
    finally:
        if refused in sys.meta_path:
            sys.meta_path.remove(refused)
