"""Arrow data as Polars frames and series, typed (``pl.from_arrow`` returns either)."""

from __future__ import annotations

import polars as pl
import pyarrow as pa


def frame(data: pa.Table | pa.RecordBatch) -> pl.DataFrame:
    """An Arrow table or batch as a Polars DataFrame (zero-copy where Arrow allows)."""
    df = pl.from_arrow(data)
    assert isinstance(df, pl.DataFrame)
    return df


def series(data: pa.Array | pa.ChunkedArray) -> pl.Series:
    """An Arrow array as a Polars Series."""
    s = pl.from_arrow(data)
    assert isinstance(s, pl.Series)
    return s
