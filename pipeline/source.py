"""Archive → ``Iterator[pa.RecordBatch]``: ADBC SQLite, keyset pages, one fixed schema.

Export order is by instant (newest first), then key. SQLite cannot index an
instant spelled in several ways, so ordering by an expression re-sorts the
table for every page (quadratic), and following a sorted key list instead
costs a random page read per row (measured: 3× slower than reading in table
order). So the table is read twice, sequentially, in keyset pages over
``rowid`` (never OFFSET; each page is its own statement, so the driver's
first-batch type inference cannot fail on a later page):

1. a key pass reads only ``(time, size)``, parses each time once (vectorised),
   and cuts the instant range into buckets of about ``bucket_bytes`` each;
2. the row pass routes every row to its bucket, spilled as Arrow IPC to a
   temporary folder; then each bucket in turn is read back, sorted by
   ``(instant desc, key asc)`` and yielded in batches.

Work is O(n log n), disk I/O sequential, and memory bounded by one bucket.
A table that fits in one bucket is sorted in memory without spilling.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from pathlib import Path

import adbc_driver_manager as adbc
import adbc_driver_sqlite
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from .errors import ArchiveError, ExportError, UsageError
from .records import RecordType
from .timestamps import parse_instants

_SQLITE_MAGIC = b"SQLite format 3\x00"
# Sorts after every real instant: rows whose time does not parse come last.
_UNPLACED = 2**63 - 1
_KEY_PAGE_ROWS = 65_536
_ROW_PAGE_ROWS = 16_384
BUCKET_BYTES = 32 * 2**20
_MAX_BUCKETS = 512


@dataclass(frozen=True)
class Filters:
    """Which rows to export: exact DID, inclusive instant bounds in µs since the epoch."""

    did: str | None = None
    since: int | None = None
    until: int | None = None

    @classmethod
    def parse(
        cls, did: str | None = None, since: str | datetime | None = None, until: str | datetime | None = None
    ) -> Filters:
        """Filters from user input: dates or ISO 8601 date-times; a bare-date ``until`` means that day's end (UTC)."""
        lo = parse_bound(since, end_of_day=False, option="--since")
        hi = parse_bound(until, end_of_day=True, option="--until")
        if lo is not None and hi is not None and lo > hi:
            raise UsageError(f"--since ({since}) is after --until ({until})")
        return cls(did=did, since=lo, until=hi)


def parse_bound(value: str | datetime | None, *, end_of_day: bool, option: str) -> int | None:
    """A --since/--until value as µs since the epoch; a bare date --until means the day's end (UTC)."""
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip()
        try:
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                day = datetime.fromisoformat(text).date()
                dt = datetime.combine(day, time.max if end_of_day else time.min)
            else:
                dt = datetime.fromisoformat(text.replace(" ", "T", 1))
        except ValueError:
            raise UsageError(
                f"{option}: cannot read {value!r} as a date (use YYYY-MM-DD or an ISO 8601 date-time)"
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass
class Unplaced:
    """Rows whose time is not an instant, excluded because a time filter was given."""

    keys: list[str] = field(default_factory=list)
    values: list[str | None] = field(default_factory=list)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _as_text(name: str) -> str:
    # Every column is read as TEXT: SQLite's columns are untyped, and the ADBC
    # driver would otherwise type a column by the first values it meets.
    return f"CAST(p.{_quote(name)} AS TEXT) AS {_quote(name)}"


class Archive:
    """A Bluesky archive opened read-only; validates the file on open."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        if not self.path.exists():
            raise ArchiveError(f"archive not found: {self.path}")
        if not self.path.is_file():
            raise ArchiveError(f"archive is not a file: {self.path}")
        try:
            with open(self.path, "rb") as f:
                magic = f.read(len(_SQLITE_MAGIC))
        except OSError as e:
            raise ArchiveError(f"cannot read archive {self.path}: {e.strerror}") from None
        if magic != _SQLITE_MAGIC:
            raise ArchiveError(f"not a SQLite database: {self.path}")
        self._sources: list[RecordSource] = []
        uri = "file:" + _uri_path(self.path.resolve()) + "?mode=ro"
        try:
            self._db = adbc.AdbcDatabase(driver=adbc_driver_sqlite._driver_path(), uri=uri)
            self._conn = adbc.AdbcConnection(self._db)
            self._tables = self._read_tables()
        except adbc.Error as e:
            raise ArchiveError(f"cannot open archive {self.path}: {_adbc_message(e)}") from None

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for source in self._sources:
            source.close()
        self._conn.close()
        self._db.close()

    def _query(self, sql: str, params: pa.RecordBatch | None = None, rows: int | None = None) -> pa.RecordBatchReader:
        return _query(self._conn, sql, params, rows)

    def _read_tables(self) -> dict[str, set[str]]:
        names = self._query("SELECT name FROM sqlite_master WHERE type = 'table'").read_all()
        tables = {}
        for name in names.column(0).to_pylist():
            info = self._query(f"SELECT name FROM pragma_table_info({_literal(name)})").read_all()
            tables[name] = set(info.column(0).to_pylist())
        return tables

    def has_table(self, rtype: RecordType) -> bool:
        return rtype.table in self._tables

    def check(self, rtype: RecordType) -> None:
        """Raise ArchiveError unless the table and every column we read are there."""
        if rtype.table not in self._tables:
            raise ArchiveError(f"archive {self.path} has no {rtype.table!r} table")
        missing = [c for c in rtype.column_names if c not in self._tables[rtype.table]]
        if missing:
            raise ArchiveError(f"table {rtype.table!r} in {self.path} lacks column(s): {', '.join(missing)}")

    def read(
        self,
        rtype: RecordType,
        filters: Filters = Filters(),
        batch_size: int = 1000,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> RecordSource:
        """The rows of ``rtype`` that pass ``filters``, in export order, as record batches.

        ``spill_dir`` is where a large table is sorted on disk (default: the system temp folder).
        """
        self.check(rtype)
        source = RecordSource(self, rtype, filters, batch_size, spill_dir)
        self._sources.append(source)
        return source


class RecordSource:
    """Iterable of ``pa.RecordBatch`` in export order, one fixed schema (every column a string).

    The key pass runs on construction, so ``total`` (the number of rows that
    will be yielded) is known before the first batch.
    """

    def __init__(
        self,
        archive: Archive,
        rtype: RecordType,
        filters: Filters,
        batch_size: int,
        spill_dir: str | os.PathLike[str] | None = None,
        bucket_bytes: int = BUCKET_BYTES,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.rtype = rtype
        self.filters = filters
        self.batch_size = batch_size
        self.schema = pa.schema([(c, pa.string()) for c in rtype.column_names])
        self.unplaced = Unplaced()
        self._spill_parent = spill_dir
        self._spill: Path | None = None
        self._conn = adbc.AdbcConnection(archive._db)
        self._closed = False
        try:
            # One read transaction for both passes: they see the same rows.
            self._conn.set_autocommit(False)
            self.total, self._bounds = self._plan(bucket_bytes)
        except adbc.Error as e:
            self.close()
            raise ExportError(f"reading the archive failed: {_adbc_message(e)}", record_type=rtype.name) from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.close()
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    # -- reading -----------------------------------------------------------------

    def _pages(self, columns: str, schema: pa.Schema, rows: int) -> Iterator[pa.Table]:
        """Keyset pages over rowid of the filtered table: ``_rid`` plus ``columns``, cast to ``schema``."""
        r = self.rtype
        where = " AND p.did = ?" if self.filters.did is not None else ""
        sql = (
            f"SELECT p.rowid AS _rid, {columns} FROM main.{_quote(r.table)} AS p"
            f" WHERE p.rowid > ?{where} ORDER BY p.rowid LIMIT {rows}"
        )
        full = pa.schema([("_rid", pa.int64()), *schema])
        after = -(2**63)
        while True:
            params = [pa.array([after], pa.int64())]
            if self.filters.did is not None:
                params.append(pa.array([self.filters.did], pa.string()))
            try:
                page = _query(
                    self._conn, sql, pa.record_batch(params, names=[f"p{i}" for i in range(len(params))]), rows
                )
                table = page.read_all()
            except adbc.Error as e:
                raise ExportError(
                    f"reading the archive failed: {_adbc_message(e)}",
                    record_type=r.name,
                    key_range=f"rowid after {after}",
                ) from None
            if table.num_rows == 0:
                return
            yield table.cast(full)
            after = table.column("_rid")[-1].as_py()
            if table.num_rows < rows:
                return

    def _instants(self, times: pl.Series) -> tuple[pl.Series, pl.Series]:
        """(-instant with unplaceable rows last, keep-mask after the time filters)."""
        inst = parse_instants(times)
        keep = inst.is_not_null()
        if self.filters.since is not None:
            keep &= inst >= self.filters.since
        if self.filters.until is not None:
            keep &= inst <= self.filters.until
        if self.filters.since is None and self.filters.until is None:
            keep |= inst.is_null()
        return (-inst).fill_null(_UNPLACED).alias("_ninst"), keep

    def _plan(self, bucket_bytes: int) -> tuple[int, pl.Series]:
        """Key pass: count the rows, and cut the instant range into buckets of ~bucket_bytes."""
        r = self.rtype
        size = " + ".join(f"COALESCE(octet_length(p.{_quote(c)}), 0)" for c in r.column_names)
        columns = f"{_as_text(r.key)}, {_as_text(r.time)}, {size} AS _size"
        schema = pa.schema([(r.key, pa.string()), (r.time, pa.string()), ("_size", pa.int64())])
        keys: list[pl.DataFrame] = []
        for page in self._pages(columns, schema, _KEY_PAGE_ROWS):
            df = _frame(page)
            ninst, keep = self._instants(df.get_column(r.time))
            dropped = ninst.eq(_UNPLACED) & ~keep
            if dropped.any():
                self.unplaced.keys.extend(df.get_column(r.key).filter(dropped).to_list())
                self.unplaced.values.extend(df.get_column(r.time).filter(dropped).to_list())
            keys.append(pl.DataFrame([ninst, df.get_column("_size") + 64]).filter(keep))
        if not keys:
            return 0, pl.Series("_ninst", [], pl.Int64)
        all_keys = pl.concat(keys).group_by("_ninst").agg(pl.col("_size").sum()).sort("_ninst")
        total_bytes = int(all_keys.get_column("_size").sum())
        target = max(bucket_bytes, total_bytes // _MAX_BUCKETS + 1)
        # A bucket starts where the running size crosses a multiple of target.
        cut = (all_keys.get_column("_size").cum_sum() // target).diff().fill_null(0) > 0
        bounds = all_keys.get_column("_ninst").filter(cut)
        return int(sum(k.height for k in keys)), bounds

    def _rows(self) -> Iterator[pa.Table]:
        """The filtered rows in table order (pages of at least _ROW_PAGE_ROWS), with ``_ninst``."""
        columns = ", ".join(_as_text(c) for c in self.rtype.column_names)
        for page in self._pages(columns, self.schema, max(self.batch_size, _ROW_PAGE_ROWS)):
            ninst, keep = self._instants(_frame(page.select([self.rtype.time])).to_series())
            table = page.drop_columns(["_rid"]).append_column("_ninst", ninst.to_arrow())
            yield table if keep.all() else table.filter(keep.to_arrow())

    def _sort(self, table: pa.Table) -> pa.Table:
        order = [("_ninst", "ascending"), (self.rtype.key, "ascending")]
        return table.take(pc.sort_indices(table, sort_keys=order)).combine_chunks()

    def _sorted_buckets(self) -> Iterator[pa.Table]:
        """Each bucket's rows, sorted, in order; spilled to disk first unless there is one bucket."""
        if len(self._bounds) == 0:
            parts = list(self._rows())
            if parts:
                yield self._sort(pa.concat_tables(parts))
            return
        self._spill = Path(tempfile.mkdtemp(prefix=".spill-", dir=self._spill_parent))
        writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        try:
            for table in self._rows():
                ids = self._bounds.search_sorted(_frame(table.select(["_ninst"])).to_series(), side="right")
                order = ids.arg_sort()
                grouped = table.take(order.to_arrow())
                counts = ids.gather(order).rle()
                start = 0
                for bucket, n in zip(counts.struct.field("value"), counts.struct.field("len"), strict=True):
                    w = writers.get(bucket)
                    if w is None:
                        path = str(self._spill / f"{bucket}.arrow")
                        w = writers[bucket] = ipc.new_stream(path, table.schema)
                    w.write_table(grouped.slice(start, n))
                    start += n
        finally:
            for w in writers.values():
                w.close()
        for bucket in sorted(writers):
            path = self._spill / f"{bucket}.arrow"
            with ipc.open_stream(str(path)) as reader:
                table = self._sort(reader.read_all())
            path.unlink()
            yield table
            del table

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        n = self.batch_size
        carry: pa.Table | None = None  # the last, short batch of the previous bucket
        for bucket in self._sorted_buckets():
            start = 0
            if carry is not None:
                start = min(n - carry.num_rows, bucket.num_rows)
                carry = pa.concat_tables([carry, bucket.slice(0, start)]).combine_chunks()
                if carry.num_rows < n:
                    continue
                yield self._batch(carry)
                carry = None
            full = start + (bucket.num_rows - start) // n * n
            for first in range(start, full, n):
                yield self._batch(bucket.slice(first, n))
            if full < bucket.num_rows:
                carry = bucket.slice(full)
            del bucket  # release the bucket before the next is read
        if carry is not None and carry.num_rows:
            yield self._batch(carry.combine_chunks())

    def _batch(self, table: pa.Table) -> pa.RecordBatch:
        """One output batch; its key range rides along in the schema metadata for error messages."""
        ninst = table.column("_ninst")
        keys = table.column(self.rtype.key)
        meta = {
            "first_instant": str(ninst[0]),
            "first_key": keys[0].as_py() or "",
            "last_instant": str(ninst[-1]),
            "last_key": keys[-1].as_py() or "",
        }
        batch = table.drop_columns(["_ninst"]).to_batches(max_chunksize=None)[0]
        return batch.replace_schema_metadata(meta)


def key_range(batch: pa.RecordBatch) -> str:
    """The key range a source batch covers, as a user reads it (for error messages)."""
    meta = batch.schema.metadata or {}
    try:
        first = describe_key((int(meta[b"first_instant"]), meta[b"first_key"].decode()))
        last = describe_key((int(meta[b"last_instant"]), meta[b"last_key"].decode()))
    except (KeyError, ValueError):
        return "unknown"
    return f"{first} … {last}"


def _frame(table: pa.Table | pa.RecordBatch) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df


def describe_key(key: tuple[int, str]) -> str:
    """A key as a user reads it: the key value and its instant."""
    from .timestamps import format_micros

    ninst, k = key
    when = "unparseable time" if ninst == _UNPLACED else format_micros(-ninst)
    return f"{k or '(start)'} @ {when}"


def _uri_path(path: Path) -> str:
    from urllib.parse import quote

    return quote(str(path), safe="/")


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _adbc_message(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.replace("INVALID_ARGUMENT: ", "").replace("IO: ", "")


def _statement(
    conn: adbc.AdbcConnection, sql: str, params: pa.RecordBatch | None, rows: int | None
) -> adbc.AdbcStatement:
    st = adbc.AdbcStatement(conn)
    st.set_sql_query(sql)
    if rows:
        st.set_options(**{adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value: str(rows)})
    if params is not None:
        st.bind(params)
    return st


def _query(
    conn: adbc.AdbcConnection, sql: str, params: pa.RecordBatch | None = None, rows: int | None = None
) -> pa.RecordBatchReader:
    st = _statement(conn, sql, params, rows)
    handle, _ = st.execute_query()
    reader = pa.RecordBatchReader.from_stream(handle)
    # The statement must outlive the stream it produced.
    return _Owned(reader, st)


class _Owned:
    """A RecordBatchReader that closes its ADBC statement when exhausted or closed."""

    def __init__(self, reader: pa.RecordBatchReader, statement: adbc.AdbcStatement):
        self._reader = reader
        self._statement = statement

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._reader
        finally:
            self.close()

    def read_all(self) -> pa.Table:
        try:
            return self._reader.read_all()
        finally:
            self.close()

    def close(self) -> None:
        self._reader.close()
        self._statement.close()
