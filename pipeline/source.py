"""Archive → ``Iterator[pa.RecordBatch]``: ADBC SQLite, keyset pages, one fixed schema.

Export order is by instant (newest first), then key. SQLite cannot index an
instant spelled in several ways, so ordering by an expression re-sorts the
table for every page (quadratic), and following a sorted key list instead
costs a random page read per row (measured: 3× slower than reading in table
order). So:

1. a key pass asks SQLite for the number of rows per second of the time
   column (answered from its index) to plan the buckets of an external sort;
2. the rows are read in table order, in keyset pages over ``rowid`` (never
   OFFSET; each page is its own statement, so the driver's first-batch type
   inference cannot fail on a later page), each row's instant parsed exactly;
3. ``sort.BucketSorter`` puts the rows in export order with bounded memory.

``RecordSource`` does all three for a library user. The runner uses ``pages``
and ``sorter`` itself, so that it converts rows while the archive is read
and sorts what it will write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import threading
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TypeVar

import adbc_driver_manager as adbc
import adbc_driver_sqlite
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ArchiveError, Cancelled, ExportError, UsageError
from .frames import frame, series
from .interrupts import held
from .records import RecordType
from .snapshot import Copy, Stopped
from .sort import NINST, NSUB, RID, UNPLACED, UTF8, BucketSorter, Plan
from .timestamps import day_nanos, format_nanos, in_range_nanos, parse_instants, to_nanos
from .tuning import Once, OpenFiles, Tuning

T = TypeVar("T")
_SQLITE_MAGIC = b"SQLite format 3\x00"
log = logging.getLogger("pipeline")
RETRIES = 5  # a locked or busy archive is retried this many times
RETRY_DELAY = 0.1  # seconds before the first retry; doubled each time (0.1 + 0.2 + ... + 1.6 = 3.1 s)
RETRY_DELAY_MAX = 2.0  # no single wait is longer
PLAN_ROWS = 65_536
PLAN_SAMPLE = 16  # the key pass parses one time value in this many
BATCH_BYTES = 64 * 2**20  # the most a page or a batch holds, however large its rows
# Pages hold a quarter of the batch budget: the runner keeps a few pages queued and
# converting at once, each converted into copies of its size. Pages with a huge row
# (over HUGE_ROW of the budget) hold an eighth: its value is copied whole several
# times on the way (2,000 rows of 1.5 MB to JSON: memray peak 481 MiB with a
# quarter, 305 MiB with an eighth). Ordinary pages keep a quarter: an eighth cut
# 1M ordinary posts into 11,000-row pages and cost 20% (Polars' cost per call).
PAGES_PER_BATCH = 4
HUGE_PAGES_PER_BATCH = 8
HUGE_ROW = 1 / 64
_ROW_OVERHEAD = 8  # bytes per cell beside its text (offsets, validity), for the page budget


@dataclass(frozen=True)
class Filters:
    """Which rows to export: exact DID, inclusive instant bounds in ns since the epoch (UTC)."""

    did: str | None = None
    since: int | None = None
    until: int | None = None

    @classmethod
    def parse(
        cls, did: str | None = None, since: str | datetime | None = None, until: str | datetime | None = None
    ) -> Filters:
        """Filters from user input: dates or date-times in any spelling the archive uses; a
        bare-date ``until`` means that day's last nanosecond (UTC)."""
        lo = parse_bound(since, end_of_day=False, option="--since")
        hi = parse_bound(until, end_of_day=True, option="--until")
        if lo is not None and hi is not None and lo > hi:
            raise UsageError(f"--since ({since}) is after --until ({until})")
        return cls(did=did, since=lo, until=hi)

    @property
    def timed(self) -> bool:
        return self.since is not None or self.until is not None

    def keep(self, us: pl.Series, ns: pl.Series) -> pl.Series:
        """Which instants (µs, ns past the µs) the time bounds keep; null instants are not kept."""
        keep = us.is_not_null()
        if self.since is not None:
            lo_us, lo_ns = divmod(self.since, 1000)
            keep &= (us > lo_us) | ((us == lo_us) & (ns >= lo_ns))
        if self.until is not None:
            hi_us, hi_ns = divmod(self.until, 1000)
            keep &= (us < hi_us) | ((us == hi_us) & (ns <= hi_ns))
        return keep.fill_null(False)


def parse_bound(value: str | datetime | None, *, end_of_day: bool, option: str) -> int | None:
    """A --since/--until value as ns since the epoch; a bare date --until means the day's end (UTC).

    Date-times are read like the archive's own timestamps (RFC 3339, Go's form,
    SQLite's, up to 9 fractional digits; no zone means UTC), then as any ISO 8601
    date-time Python reads. The instant must lie in the years 0001–9999 UTC.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        nanos = to_nanos(value)
    else:
        text = value.strip()
        try:  # a date alone, in any ISO 8601 spelling (2024-05-01, 20240501, 2024-W18-3)
            nanos = day_nanos(date.fromisoformat(text), end=end_of_day)
        except ValueError:
            us, ns = parse_instants(pl.Series([text], dtype=pl.String), checked=False)
            if us[0] is not None:
                nanos = us[0] * 1000 + ns[0]
            else:
                try:
                    nanos = to_nanos(datetime.fromisoformat(text.replace(" ", "T", 1)))
                except ValueError:
                    raise UsageError(
                        f"{option}: cannot read {value!r} as a date (use YYYY-MM-DD or an ISO 8601 date-time)"
                    ) from None
    if not in_range_nanos(nanos):
        raise UsageError(f"{option}: {value} is outside the years 0001-9999 in UTC; give a bound within them")
    return nanos


def iso_bound(nanos: int | None) -> str | None:
    """A filter bound as the manifest writes it (RFC 3339 UTC, 0/3/6/9 digits)."""
    return None if nanos is None else format_nanos(nanos)


@dataclass(frozen=True)
class Reads:
    """Which columns to read; ``only_where`` reads a column only where another is true.

    Columns not read come back NULL, so the schema stays the same.
    """

    columns: frozenset[str] | None = None  # None: all
    only_where: tuple[tuple[str, str], ...] = ()  # (column, condition column)

    def expression(self, name: str) -> str:
        if self.columns is not None and name not in self.columns:
            return f"NULL AS {_quote(name)}"
        for column, condition in self.only_where:
            if column == name:
                return (
                    f"CASE WHEN p.{_quote(condition)} THEN {_as_text(name).rsplit(' AS ', 1)[0]} END AS {_quote(name)}"
                )
        return _as_text(name)

    def size(self, name: str) -> str:
        """The bytes column ``name`` puts in a page (its stored text), without loading it."""
        if self.columns is not None and name not in self.columns:
            return "0"
        size = f"ifnull(octet_length(p.{_quote(name)}), 0)"
        for column, condition in self.only_where:
            if column == name:
                return f"CASE WHEN p.{_quote(condition)} THEN {size} ELSE 0 END"
        return size


@dataclass
class Unplaced:
    """Rows whose time is not an instant, excluded because a time filter was given."""

    keys: list[str | None] = field(default_factory=list)
    values: list[str | None] = field(default_factory=list)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cast(name: str) -> str:
    # Every column is read as TEXT: SQLite's columns are untyped, and the ADBC
    # driver would otherwise type a column by the first values it meets.
    return f"CAST(p.{_quote(name)} AS TEXT)"


def _as_text(name: str) -> str:
    return f"{_cast(name)} AS {_quote(name)}"


class Archive:
    """A Bluesky archive opened read-only; validates the file on open.

    A query that finds the archive locked or busy (another process writing it)
    is retried ``retries`` times with exponential backoff, each retry logged
    on the ``pipeline`` logger; other errors fail at once.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        retries: int = RETRIES,
        *,
        origin: str | os.PathLike[str] | None = None,
        immutable: bool = False,
    ):
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.retries = retries
        self.retried = 0  # retries while opening
        self.cancel = threading.Event()  # set by the runner: stops a retry's wait (a stream failed)
        self.path = Path(path)
        # The archive as the user named it: ``path`` may be a snapshot copy of it (see snapshot()).
        self.origin = Path(origin) if origin is not None else self.path
        self.copied = origin is not None
        self._pinned: list[int] = []
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
        self.lock = threading.RLock()
        self.size_bytes = self.path.stat().st_size  # of the snapshot read, if one is taken
        self.snapshot_path: Path | None = None  # where the copy goes (see snapshot())
        self._copy: Copy | None = None
        self._ready = False  # the copy is complete, not yet switched to
        self._readers = 0  # statements open across calls (open_reader): no switch meanwhile
        self._closing = False
        self.copy_ended = threading.Event()  # set once the copy's thread has settled (switched, failed or stopped)
        try:
            # One read transaction for the whole export, begun by the first query below:
            # every record type, page and stream reads the same snapshot of the archive,
            # however it is written meanwhile (see read_table).
            self._db, self._conn = _open(self.path, immutable)
            self._tables = retrying(self._read_tables, self.retries, "opening the archive", self._count_retry)
        except adbc.Error as e:
            self._close_handles()
            if transient(e):  # locked past the retries: a failed run, not a bad archive
                raise ExportError(
                    f"cannot open archive {self.path}: {_adbc_message(e)}{gave_up(self.retries)}"
                ) from None
            raise ArchiveError(f"cannot open archive {self.path}: {_adbc_message(e)}") from None

    def _count_retry(self) -> None:
        self.retried += 1

    # -- one snapshot, without starving the archive's writer ----------------------------

    def snapshot(self, dest: str | os.PathLike[str]) -> None:
        """Read one consistent snapshot without holding the archive's lock for long.

        In WAL mode a reader never blocks the writer: nothing to do. In rollback-journal
        mode (bskyarchive's: its writer has no busy timeout, so its commits fail while
        any reader holds SQLite's shared lock) the file is copied to ``dest`` on a
        thread of its own (``snapshot.Copy``) while this archive's read transaction
        holds the shared lock, so the copy is the committed state read from the start.
        Meanwhile the export reads the archive itself, in that same transaction; once
        the copy is complete, and no statement spans the moment, this archive switches
        to the copy (immutable: nobody writes it) and closes its connection to the
        file, which lets the writer commit again (``_switch``). The copy is made through
        a file descriptor that stays open until then: closing any descriptor of a file
        drops the POSIX locks this process holds on it, SQLite's included.

        If there is no room for the copy (disk full, quota, file size limit) or it
        fails, the export reads the archive in place with a warning: still one
        snapshot, but the writer is blocked until the export ends.
        """
        if self.journal_mode() == "wal":
            return
        dest = Path(dest)
        fd = os.open(self.path, os.O_RDONLY)
        self._pinned.append(fd)  # closed after the connection: the lock must stay till then
        with self.lock:
            self.size_bytes = os.fstat(fd).st_size  # what is committed: no commit while the lock is held
            free = _free_bytes(dest.parent)
            if free is not None and free < self.size_bytes + 64 * 2**20:  # the export needs room too
                _in_place("no room to copy the archive for the export", os.strerror(errno.ENOSPC))
                return
            self.copied, self.snapshot_path = True, dest
            with held():  # known to ``close`` as soon as it runs, whatever comes meanwhile
                self._copy = Copy(fd, dest, self._copied)
                self._copy.start()

    def _copied(self, error: BaseException | None) -> None:
        """The copy's end (on its thread): switch to it, or read in place if it failed."""
        try:
            with self.lock:
                if error is None:
                    self._ready = True
                    self._switch()
                elif not isinstance(error, Stopped):
                    self.copied = False
                    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
                    room = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                    what = "no room to copy the archive for the export" if room else "copying the archive failed"
                    _in_place(what, reason)
        finally:
            self.copy_ended.set()

    def _switch(self) -> None:
        """From the archive to its complete copy, unless a statement is open across calls
        (``open_reader``) or the archive is being closed; ``lock`` held."""
        if not self._ready or self._readers or self._closing or self.snapshot_path is None:
            return
        self._ready = False
        try:
            db, conn = _open(self.snapshot_path, immutable=True)
        except adbc.Error as e:
            self.copied = False
            _in_place("opening the copy of the archive failed", _adbc_message(e))
            return
        old = (self._conn, self._db)
        self._conn, self._db, self.path = conn, db, self.snapshot_path
        for handle in old:
            with contextlib.suppress(adbc.Error, RuntimeError):
                handle.close()  # the shared lock goes here, before the descriptor below
        while self._pinned:
            os.close(self._pinned.pop())
        log.debug("the copy of the archive is complete; reading it from now on")

    def journal_mode(self) -> str:
        """SQLite's journal mode of the archive (``wal``, ``delete``, ...), read in its transaction."""
        table = retrying(lambda: self.read_table("PRAGMA journal_mode"), self.retries, "opening the archive")
        return str(table.column(0)[0].as_py()).lower()

    def owner(self) -> str:
        """The archive owner's DID, from ``profiles`` (bskyarchive writes a row per sync).

        Raises ArchiveError if there is no profile, or profiles of several DIDs."""
        if not self.has_table_named("profiles") or "did" not in self._tables["profiles"]:
            raise ArchiveError(f"archive {self.origin} has no 'profiles' table: cannot tell whose posts are 'self'")
        table = retrying(
            lambda: self.read_table(
                "SELECT DISTINCT CAST(did AS TEXT) AS did FROM main.profiles WHERE did IS NOT NULL"
            ),
            self.retries,
            "profiles",
            cancel=self.cancel,
        )
        dids = sorted(valid_text(table.column("did")).to_pylist())
        if not dids:
            raise ArchiveError(f"archive {self.origin} has no profile: cannot tell whose posts are 'self'")
        if len(dids) > 1:
            raise ArchiveError(
                f"archive {self.origin} has profiles of {len(dids)} accounts ({', '.join(dids[:3])}"
                f"{', ...' if len(dids) > 3 else ''}): give --did DID instead of 'self'"
            )
        return dids[0]

    def count_others(self, rtype: RecordType, owner: str, filters: Filters) -> int:
        """How many records of ``rtype`` the time filters keep whose ``did`` is not ``owner``
        (an archive's reposts of other accounts' posts)."""
        others = f"FROM main.{_quote(rtype.table)} AS p WHERE p.did < ? OR p.did > ?"
        params = pa.record_batch([pa.array([owner]), pa.array([owner])], names=["p0", "p1"])
        if not filters.timed:
            sql = f"SELECT count(*) AS n {others}"
            table = retrying(lambda: self.read_table(sql, params), self.retries, rtype.name, cancel=self.cancel)
            return int(table.column(0)[0].as_py())
        sql = f"SELECT CAST(p.{_quote(rtype.time)} AS TEXT) AS t {others}"
        table = retrying(lambda: self.read_table(sql, params), self.retries, rtype.name, cancel=self.cancel)
        times = series(valid_text(table.column("t")))
        return int(filters.keep(*parse_instants(times)).sum())

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Idempotent. The copy's thread is stopped first (it may be writing into a folder
        about to be removed): without the lock, which its last step takes."""
        with self.lock:
            self._closing = True
        if self._copy is not None:
            self._copy.stop()
        for source in self._sources:
            source.close()
        self._close_handles()

    def _close_handles(self) -> None:
        for handle in (getattr(self, "_conn", None), getattr(self, "_db", None)):
            if handle is not None:
                # A cleanup error (an interrupt left a statement open) must not replace the error being raised.
                with contextlib.suppress(adbc.Error, RuntimeError):
                    handle.close()
        pinned = getattr(self, "_pinned", [])
        while pinned:  # descriptors of the archive kept open while SQLite held its lock (see snapshot)
            os.close(pinned.pop())

    def _query(self, sql: str, params: pa.RecordBatch | None = None, rows: int | None = None) -> pa.RecordBatchReader:
        return _query(self._conn, sql, params, rows)

    def read_table(self, sql: str, params: pa.RecordBatch | None = None, rows: int | None = None) -> pa.Table:
        """The whole result of one query, in the archive's one read transaction.

        Every source and stream reads through this one connection, so all see
        the snapshot taken when the archive was opened; ``lock`` keeps their
        calls into the driver one at a time (SQLite itself runs several open
        statements on one connection).
        """
        with self.lock:
            self._switch()
            return _query(self._conn, sql, params, rows).read_all()

    def open_reader(self, sql: str, params: pa.RecordBatch | None = None, rows: int | None = None) -> _Owned:
        """A query to read batch by batch, each ``read_next_batch`` under ``lock``; give it to
        ``close_reader`` at the end. Its statement holds the connection: the archive does not
        switch to its copy while it is open."""
        with self.lock:
            self._switch()
            reader = _query(self._conn, sql, params, rows)
            self._readers += 1
            return reader

    def close_reader(self, reader: _Owned) -> None:
        with self.lock:
            try:
                reader.close()
            finally:
                self._readers -= 1
                self._switch()

    def _read_tables(self) -> dict[str, set[str]]:
        listed = self._query("SELECT CAST(name AS BLOB), type, CAST(sql AS BLOB) FROM sqlite_master").read_all()
        tables, self._views, self._no_rowid = {}, set(), set()
        for raw, kind, sql in zip(*(c.to_pylist() for c in listed.columns), strict=True):
            name = raw.decode("utf-8", errors="replace")
            if kind == "view":
                self._views.add(name)
            if kind != "table":
                continue
            options = sql[sql.rfind(b")") :] if sql is not None else b""  # after the column list: STRICT, WITHOUT ROWID
            if re.search(rb"\bWITHOUT\s+ROWID\b", options, re.IGNORECASE):
                self._no_rowid.add(name)
            info = self._query(f"SELECT name FROM pragma_table_info({_literal(name)})").read_all()
            tables[name] = set(info.column(0).to_pylist())
        return tables

    def has_table(self, rtype: RecordType) -> bool:
        return self.has_table_named(rtype.table)

    def has_table_named(self, name: str) -> bool:
        return name in self._tables

    def check(self, rtype: RecordType) -> None:
        """Raise ArchiveError unless the table and every column we read are there."""
        if rtype.table in self._views:
            raise ArchiveError(f"archive {self.origin}: {rtype.table!r} is a view, not a table; export from the table")
        if rtype.table not in self._tables:
            raise ArchiveError(f"archive {self.origin} has no {rtype.table!r} table")
        if rtype.table in self._no_rowid:
            raise ArchiveError(
                f"archive {self.origin}: table {rtype.table!r} is declared WITHOUT ROWID; this tool reads tables"
                f" in rowid pages (copy it into a table with a rowid first)"
            )
        missing = [c for c in rtype.column_names if c not in self._tables[rtype.table]]
        if missing:
            raise ArchiveError(f"table {rtype.table!r} in {self.path} lacks column(s): {', '.join(missing)}")

    def read(
        self,
        rtype: RecordType,
        filters: Filters = Filters(),
        batch_size: int = 1000,
        spill_dir: str | os.PathLike[str] | None = None,
        reads: Reads | None = None,
        bucket_bytes: int | None = None,
        batch_bytes: int = BATCH_BYTES,
        tuning: Tuning | None = None,
        open_files: OpenFiles | None = None,
    ) -> RecordSource:
        """The rows of ``rtype`` that pass ``filters``, in export order, as record batches.

        ``spill_dir`` is where a large table is sorted on disk (default: the system
        temp folder). ``reads`` narrows what is read (the rest comes back NULL).
        ``tuning``: page and bucket sizes, the huge-row hook; ``open_files``: the
        run's budget of open sort files.
        """
        self.check(rtype)
        source = RecordSource(
            self, rtype, filters, batch_size, spill_dir, bucket_bytes=bucket_bytes, reads=reads,
            batch_bytes=batch_bytes, tuning=tuning, open_files=open_files,
        )  # fmt: skip
        self._sources.append(source)
        return source


@dataclass(frozen=True)
class Position:
    """Where reading stands after a page: its last rowid, the rows yielded so far, and how
    many rows a time filter has left out as unplaced. Pages carry it as schema metadata."""

    after: int
    seen: int
    unplaced: int

    def metadata(self) -> dict[bytes, bytes]:
        return {b"pipeline.position": f"{self.after} {self.seen} {self.unplaced}".encode()}

    @classmethod
    def of(cls, page: pa.Table) -> Position:
        after, seen, unplaced = (page.schema.metadata or {})[b"pipeline.position"].split()
        return cls(int(after), int(seen), int(unplaced))


class RecordSource:
    """Iterable of ``pa.RecordBatch`` in export order, one fixed schema (every column a string).

    A key pass runs on construction: the time column alone is streamed (SQLite
    reads it from the ``created_at`` index) and a sample of it parsed to plan
    the sort's buckets; it also gives ``total`` (estimated under a time filter
    until the rows have been read).
    """

    def __init__(
        self,
        archive: Archive,
        rtype: RecordType,
        filters: Filters,
        batch_size: int,
        spill_dir: str | os.PathLike[str] | None = None,
        bucket_bytes: int | None = None,
        reads: Reads | None = None,
        batch_bytes: int = BATCH_BYTES,
        tuning: Tuning | None = None,
        open_files: OpenFiles | None = None,
        plan: bool = True,
    ):
        tuning = tuning or Tuning()
        self._page_rows = tuning.page_rows
        self._huge_rows = Once(tuning.on_huge_rows)
        self._open_files = open_files
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if batch_bytes < 1:
            raise ValueError("batch_bytes must be at least 1")
        self.batch_bytes = batch_bytes
        self.rtype = rtype
        self.filters = filters
        self.batch_size = batch_size
        self.schema = pa.schema([(c, pa.string()) for c in rtype.column_names])
        self.unplaced = Unplaced()
        self.spill_dir = spill_dir
        self.reads = reads or Reads()
        self._archive_bytes = archive.path.stat().st_size
        self.retries = archive.retries
        self.retried = 0  # retries of a locked archive, over the passes and pages
        self._archive = archive  # its connection and read transaction: the export's one snapshot
        self.start: Position | None = None  # set by resume(): pages() begins after it
        self._closed = False
        size = self._bucket_bytes = tuning.bucket_bytes if bucket_bytes is None else bucket_bytes
        if not plan:  # pages() only (pipeline.ray's read tasks): no key pass, no sort
            self.total, self.plan = 0, Plan()
            return
        try:
            self.total, self.plan = retrying(
                lambda: self._plan(size), self.retries, f"{rtype.name}, planning", self._count_retry, archive.cancel
            )
        except adbc.Error as e:
            self.close()
            message = read_failed(e, self.retries)
            raise ExportError(message, record_type=rtype.name, key_range="planning") from None
        except BaseException:  # the plan's own errors: the connection must not outlive the source
            self.close()
            raise

    def _count_retry(self) -> None:
        self.retried += 1

    def close(self) -> None:
        """Nothing to release: the connection is the archive's (each query closes its statement)."""
        self._closed = True

    # -- reading -----------------------------------------------------------------

    def _query_table(self, sql: str, params: list[pa.Array], rows: int | None, where: str) -> pa.Table:
        batch = pa.record_batch(params, names=[f"p{i}" for i in range(len(params))]) if params else None
        try:
            return retrying(
                lambda: self._archive.read_table(sql, batch, rows),
                self.retries,
                f"{self.rtype.name}, {where}",
                self._count_retry,
                self._archive.cancel,
            )
        except adbc.Error as e:
            message = read_failed(e, self.retries)
            raise ExportError(message, record_type=self.rtype.name, key_range=where) from None

    def _plan(self, bucket_bytes: int) -> tuple[int, Plan]:
        """Bucket cuts of ~bucket_bytes from a sample of the time column; and the row count.

        The time column alone is streamed as text (SQLite reads it from its
        index) and every PLAN_SAMPLE-th value is parsed by the same code as the
        pages, so every spelling is placed. A cut only sizes buckets (rows are
        placed by their exact instant later), so a sample is enough: with about
        10,000 rows a bucket, the 1-in-16 sample sizes each within a few per
        cent, and parsing it costs a sixteenth. ``total`` is exact without a
        time filter; with one it is estimated until the rows have been read.
        """
        r, f = self.rtype, self.filters
        where, params = "", []
        if f.did is not None:
            where, params = " WHERE p.did = ?", [pa.array([f.did], pa.string())]
        if r.by_key:  # read in key order already: no buckets; the count is exact without a time filter
            sql = f"SELECT count(*) FROM main.{_quote(r.table)} AS p{where}"
            count = self._query_table(sql, params, None, "planning")
            return count.column(0)[0].as_py(), Plan()
        sql = f"SELECT CAST(p.{_quote(r.time)} AS TEXT) AS t FROM main.{_quote(r.table)} AS p{where}"
        counts, rows = [], 0
        try:
            batch = pa.record_batch(params, names=["p0"]) if params else None
            lock = self._archive.lock
            reader = self._archive.open_reader(sql, batch, PLAN_ROWS)
            try:
                while True:
                    with lock:  # other streams' pages go between these batches
                        chunk = reader.read_next_batch()
                    if chunk is None:
                        break
                    rows += chunk.num_rows
                    sample = series(valid_text(chunk.column(0))).gather_every(PLAN_SAMPLE)
                    keep, ninst, _ = self._placed(*parse_instants(sample))
                    counts.append(ninst.filter(keep).rename("k").value_counts(sort=False, name="n"))
            finally:
                self._archive.close_reader(reader)  # its statement too, so the connection can close after an error
        except adbc.Error:
            raise  # retried by the caller, or turned into an ExportError there
        if not counts:
            return 0, Plan()
        per_key = pl.concat(counts).group_by("k").agg(pl.col("n").sum() * PLAN_SAMPLE).sort("k")
        timed = f.timed
        total = min(rows, int(per_key.get_column("n").sum())) if timed else rows
        all_rows = self._query_table(f"SELECT count(*) FROM main.{_quote(r.table)}", [], None, "planning")
        avg_bytes = max(64, self._archive_bytes // max(1, all_rows.column(0)[0].as_py()))
        plan = Plan.from_counts(per_key.get_column("k"), per_key.get_column("n"), max(1, bucket_bytes // avg_bytes))
        return total, plan

    def _placed(self, us: pl.Series, ns: pl.Series) -> tuple[pl.Series, pl.Series, pl.Series]:
        """(which rows the time filters keep, their ``_ninst``, their ``_nsub``) for parsed
        instants (µs, ns past the µs).

        Without a time filter every row is kept, those without an instant last
        (UNPLACED); with one, only rows whose instant is in range.
        """
        f = self.filters
        keep = f.keep(us, ns) if f.timed else pl.Series(values=[True] * len(us), dtype=pl.Boolean)
        return keep, (-us).fill_null(UNPLACED), (-ns).fill_null(0)

    def pages(self, until: int | None = None) -> Iterator[pa.Table]:
        """The filtered rows in table order, in pages of at most ``Tuning.page_rows`` rows and
        ``batch_bytes`` bytes, with ``_ninst``.

        Keyset pages over ``rowid`` (never OFFSET); each page is its own
        statement, cast to the fixed schema, so the driver's type inference
        never sees more than one page. Before each page a probe asks SQLite for
        the size of the next rows' cells (``octet_length`` reads only the record
        headers; one probe sizes several pages) and the page ends where its
        bytes would pass a quarter of ``batch_bytes`` (an eighth if it holds a
        huge row): with huge rows the pages shrink, down to one row, and grow
        back after them. When the pages are exhausted, ``total`` is the exact number of
        rows they held. ``until``: the last rowid to read (a read task's key range).
        """
        r, f = self.rtype, self.filters
        rows = max(self.batch_size, self._page_rows)
        table = f"main.{_quote(r.table)} AS p"
        cols = ", ".join(self.reads.expression(c) for c in r.column_names)
        size = " + ".join([str(_ROW_OVERHEAD * (len(r.column_names) + 1)), *map(self.reads.size, r.column_names)])
        did = " AND p.did = ?" if f.did is not None else ""
        upto = f" AND p.rowid <= {int(until)}" if until is not None else ""
        probe = f"SELECT p.rowid AS _rid, {size} AS _bytes FROM {table} WHERE p.rowid {{op}} ?{upto}{did}"
        probe += " ORDER BY p.rowid"
        probe += f" LIMIT {rows}"
        sql = (
            f"SELECT p.rowid AS _rid, {cols} FROM {table} WHERE p.rowid {{op}} ? AND p.rowid <= ?{did} ORDER BY p.rowid"
        )
        schema = pa.schema([("_rid", pa.int64()), *self.schema])
        budget = self.batch_bytes // PAGES_PER_BATCH
        huge_budget, huge_row = self.batch_bytes // HUGE_PAGES_PER_BATCH, self.batch_bytes * HUGE_ROW
        after, first, seen = -(2**63), True, 0  # the first page starts at the lowest rowid, -2**63 included
        if self.start is not None:  # resumed: after the pages a checkpoint recorded
            after, first, seen = self.start.after, False, self.start.seen
        while True:
            op = ">=" if first else ">"
            params = [pa.array([after], pa.int64())]
            if f.did is not None:
                params.append(pa.array([f.did], pa.string()))
            where = "the first rows" if first else f"rows after rowid {after}"
            sizes = self._query_table(probe.format(op=op), params, rows, where)
            if sizes.num_rows == 0:
                break
            # One probe sizes several pages: it is read again only once its rows are used up.
            rids = sizes.column("_rid").to_pylist()
            row_bytes = series(sizes.column("_bytes")).cast(pl.Int64)
            ends = row_bytes.cum_sum()
            start = 0
            while start < len(rids):
                base = int(ends[start - 1]) if start else 0
                fit = int(ends.search_sorted(base + budget, side="right")) - start
                if row_bytes.slice(start, max(1, fit)).gt(huge_row).any():
                    fit = int(ends.search_sorted(base + huge_budget, side="right")) - start
                    self._huge_rows()
                last = rids[start + max(1, fit) - 1]
                params = [pa.array([after], pa.int64()), pa.array([last], pa.int64())]
                if f.did is not None:
                    params.append(pa.array([f.did], pa.string()))
                page = self._query_table(sql.format(op=op), params, rows, where)
                placed = self._placed_page(sanitized(page.cast(schema)))
                seen += self._last_rows
                # Where the reading stands after this page: what a checkpoint records.
                yield placed.replace_schema_metadata(Position(last, seen, len(self.unplaced.keys)).metadata())
                start += max(1, fit)
                after, first, op = last, False, ">"
            if sizes.num_rows < rows:
                break
        self.total = seen

    def resume(self, position: Position, unplaced_keys: list[str | None], unplaced_values: list[str | None]) -> None:
        """Make ``pages()`` continue after ``position`` (from a checkpoint), with the rows
        left out as unplaced before it."""
        self.start = position
        self.unplaced.keys[:] = unplaced_keys
        self.unplaced.values[:] = unplaced_values

    def _placed_page(self, page: pa.Table) -> pa.Table:
        """A page with ``_ninst`` (its rows' instants), without rows the time filters leave out
        (those without an instant are kept aside in ``unplaced``); ``_last_rows`` its rows."""
        r, f = self.rtype, self.filters
        us, ns = parse_instants(frame(page.select([r.time])).to_series())
        keep, ninst, nsub = self._placed(us, ns)
        if f.timed:
            dropped = us.is_null()
            if dropped.any():
                self.unplaced.keys.extend(series(page.column(r.key)).filter(dropped).to_list())
                self.unplaced.values.extend(series(page.column(r.time)).filter(dropped).to_list())
        out = page.append_column(NINST, ninst.to_arrow()).append_column(NSUB, nsub.to_arrow())
        if not keep.all():
            out = out.filter(keep.to_arrow())
        self._last_rows = out.num_rows
        return out

    def sorter(self, order: list[str] | None = None) -> BucketSorter:
        """An external sorter with this source's plan (default order: instant, then key)."""
        order = order or [NINST, NSUB, self.rtype.key, RID]
        return BucketSorter(self.plan, order, self.spill_dir, 4 * self._bucket_bytes, self._open_files)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        with self.sorter() as sorter:
            for page in self.pages():
                sorter.add(page)
            for table in rebatch(sorter.sorted(), self.batch_size, self.batch_bytes):
                yield self._batch(table)

    def _batch(self, table: pa.Table) -> pa.RecordBatch:
        """One output batch; its key range rides along in the schema metadata for error messages."""
        batch = table.drop_columns([NINST, NSUB, RID, UTF8]).to_batches(max_chunksize=None)[0]
        return batch.replace_schema_metadata(range_metadata(table, self.rtype.key))


def sanitized(page: pa.Table) -> pa.Table:
    """``page`` with a ``_bad_utf8`` column: every text cell holding bytes that are not UTF-8
    (SQLite stores whatever bytes it is given) is replaced by its text with U+FFFD for the bad
    bytes, and noted there (column, hex of the stored bytes) to be reported as a reject. The
    whole page is checked at once (Arrow's validation); only a failing column is gone through."""
    try:
        page.validate(full=True)
        return page.append_column(UTF8, pa.nulls(page.num_rows, pa.string()))
    except pa.ArrowInvalid:
        pass
    notes: list[list[list[str]]] = [[] for _ in range(page.num_rows)]
    columns = [_valid_column(name, page.column(name), notes) for name in page.column_names]
    noted = pa.array([json.dumps(n) if n else None for n in notes], pa.string())
    return pa.Table.from_arrays([*columns, noted], names=[*page.column_names, UTF8])


def _valid_column(name: str, column: pa.ChunkedArray, notes: list[list[list[str]]]) -> pa.ChunkedArray:
    if not pa.types.is_string(column.type):
        return column
    try:
        column.validate(full=True)
        return column
    except pa.ArrowInvalid:
        pass
    fixed: list[str | None] = []
    for i, raw in enumerate(column.cast(pa.binary()).to_pylist()):
        try:
            fixed.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError:
            fixed.append(raw.decode("utf-8", errors="replace"))
            notes[i].append([name, raw.hex()])
    return pa.chunked_array([pa.array(fixed, pa.string())])


def valid_text(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A text column with bytes that are not UTF-8 replaced by U+FFFD (for planning and counting)."""
    try:
        column.validate(full=True)
        return column
    except pa.ArrowInvalid:
        raw = column.cast(pa.binary()).to_pylist()
        return pa.array([None if v is None else v.decode("utf-8", errors="replace") for v in raw], pa.string())


def _free_bytes(folder: Path) -> int | None:
    """Bytes free for this user in ``folder``'s file system (None where the OS does not say)."""
    try:
        st = os.statvfs(folder)
    except (AttributeError, OSError):
        return None
    return st.f_bavail * st.f_frsize


def _open(path: Path, immutable: bool = False) -> tuple[adbc.AdbcDatabase, adbc.AdbcConnection]:
    """A read-only connection to ``path``, not in autocommit: its first query begins the read transaction."""
    uri = "file:" + _uri_path(path.resolve()) + "?mode=ro" + ("&immutable=1" if immutable else "")
    db = adbc.AdbcDatabase(driver=adbc_driver_sqlite._driver_path(), uri=uri)
    try:
        conn = adbc.AdbcConnection(db)
        try:
            conn.set_autocommit(False)
        except BaseException:
            conn.close()
            raise
    except BaseException:
        db.close()
        raise
    return db, conn


def _in_place(what: str, reason: str) -> None:
    log.warning(
        "%s (%s); reading it in place instead, which blocks the archive's writer until the export ends", what, reason
    )


def row_bytes(table: pa.Table) -> pl.Series:
    """Each row's bytes in Arrow: its strings' lengths, plus ``_ROW_OVERHEAD`` a cell."""
    total = pl.Series("b", [_ROW_OVERHEAD * table.num_columns] * table.num_rows, pl.Int64)
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_binary(column.type) or pa.types.is_large_string(column.type):
            total = total + series(pc.binary_length(column)).cast(pl.Int64).fill_null(0)
    return total


def rebatch(tables: Iterator[pa.Table], max_rows: int, max_bytes: int) -> Iterator[pa.Table]:
    """The rows of ``tables``, in order, as tables of at most ``max_rows`` rows and
    ``max_bytes`` bytes (``row_bytes``); a row larger than ``max_bytes`` is a table alone.
    Every table but the last is full: the next row would not fit."""
    carry: list[pa.Table] = []
    carry_rows = carry_bytes = 0
    for table in tables:
        ends = row_bytes(table).cum_sum()  # bytes of rows [0, i]
        start, base = 0, 0
        while start < table.num_rows:
            room_rows = max_rows - carry_rows
            # rows that fit the bytes left: ends[i] - base <= max_bytes - carry_bytes
            fit = int(ends.search_sorted(base + max_bytes - carry_bytes, side="right")) - start
            take = min(room_rows, fit)
            if take <= 0 and carry_rows == 0:
                take = 1  # one row alone, however large
            if take > 0:
                part = table.slice(start, take)
                carry.append(part)
                carry_rows += take
                carry_bytes += int(ends[start + take - 1]) - base
                base = int(ends[start + take - 1])
                start += take
            if start < table.num_rows or carry_rows == max_rows:  # the next row does not fit: flush
                yield pa.concat_tables(carry).combine_chunks()
                carry, carry_rows, carry_bytes = [], 0, 0
        del table
    if carry_rows:
        yield pa.concat_tables(carry).combine_chunks()


def range_metadata(table: pa.Table, key: str) -> dict[str, str]:
    """The first and last (instant, key) of a sorted table, for error messages."""
    ninst, keys = table.column(NINST), table.column(key)
    return {
        "first_instant": str(ninst[0]),
        "first_key": keys[0].as_py() or "",
        "last_instant": str(ninst[-1]),
        "last_key": keys[-1].as_py() or "",
    }


def key_range(batch: pa.RecordBatch) -> str:
    """The key range a source batch covers, as a user reads it (for error messages)."""
    meta = batch.schema.metadata or {}
    try:
        first = describe_key((int(meta[b"first_instant"]), meta[b"first_key"].decode()))
        last = describe_key((int(meta[b"last_instant"]), meta[b"last_key"].decode()))
    except (KeyError, ValueError):
        return "unknown"
    return f"{first} … {last}"


def describe_key(key: tuple[int, str]) -> str:
    """A key as a user reads it: the key value and its instant."""
    from .timestamps import format_micros

    ninst, k = key
    when = "unparseable time" if ninst == UNPLACED else format_micros(-ninst)
    return f"{k or '(start)'} @ {when}"


def transient(e: BaseException) -> bool:
    """A locked archive (SQLITE_BUSY, SQLITE_LOCKED: SQLite's "database is locked", "database
    table is locked"): worth retrying. Only the message's first line counts: the rest quotes
    the SQL, which may hold names taken from the archive."""
    lines = str(e).lower().splitlines()
    return bool(lines) and ("database is locked" in lines[0] or "database table is locked" in lines[0])


def _delay(attempt: int) -> float:
    return min(RETRY_DELAY * 2**attempt, RETRY_DELAY_MAX)


def retrying(
    fn: Callable[[], T],
    retries: int,
    where: str,
    on_retry: Callable[[], None] | None = None,
    cancel: threading.Event | None = None,
) -> T:
    """``fn()``, retried ``retries`` times with exponential backoff (capped at RETRY_DELAY_MAX a
    wait) while the archive is locked; ``on_retry`` is called before each retry (to count
    them). A wait ends early, raising Cancelled, once ``cancel`` is set (another stream
    failed, or the run was interrupted)."""
    attempt = 0
    while True:
        try:
            return fn()
        except adbc.Error as e:
            if not transient(e) or attempt >= retries:
                raise
            delay = _delay(attempt)
            attempt += 1
            log.warning(
                "retry %d/%d in %.1f s: %s (%s)", attempt, retries, delay, _adbc_message(e), where,
                extra={"event": "retry"},
            )  # fmt: skip
            if on_retry is not None:
                on_retry()
            if cancel is None:
                _time.sleep(delay)
            elif cancel.wait(delay):
                raise Cancelled from None


def read_failed(e: adbc.Error, retries: int) -> str:
    """The message of a failed read; for a lock, how long it was retried."""
    return f"reading the archive failed: {_adbc_message(e)}{gave_up(retries) if transient(e) else ''}"


def gave_up(retries: int) -> str:
    """What a locked-archive error adds: how long it was retried."""
    if not retries:
        return " (not retried: --retries 0)"
    return f" (gave up after {retries} retries over {sum(map(_delay, range(retries))):.1f} s)"


def _uri_path(path: Path) -> str:
    """A path for SQLite's ``file:`` URI: its bytes percent-encoded (a path need not be UTF-8)."""
    from urllib.parse import quote

    return quote(os.fsencode(path), safe="/")


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _adbc_message(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.replace("INVALID_ARGUMENT: ", "").replace("IO: ", "")


def _statement(
    conn: adbc.AdbcConnection, sql: str, params: pa.RecordBatch | None, rows: int | None
) -> adbc.AdbcStatement:
    st = adbc.AdbcStatement(conn)
    try:
        st.set_sql_query(sql)
        if rows:
            st.set_options(**{adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value: str(rows)})
        if params is not None:
            st.bind(params)
    except BaseException:
        st.close()  # or the connection cannot be closed, and that error would hide this one
        raise
    return st


def _query(
    conn: adbc.AdbcConnection, sql: str, params: pa.RecordBatch | None = None, rows: int | None = None
) -> pa.RecordBatchReader:
    st = _statement(conn, sql, params, rows)
    try:
        handle, _ = st.execute_query()
        reader = pa.RecordBatchReader.from_stream(handle)
    except BaseException:
        st.close()  # or the connection cannot be closed after the error
        raise
    # The statement must outlive the stream it produced.
    return _Owned(reader, st)


class _Owned:
    """A RecordBatchReader that closes its ADBC statement when exhausted or closed."""

    def __init__(self, reader: pa.RecordBatchReader, statement: adbc.AdbcStatement):
        self._reader = reader
        self._statement = statement
        self._closed = False

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

    def read_next_batch(self) -> pa.RecordBatch | None:
        """The next batch, or None (and the statement closed) at the end."""
        try:
            return self._reader.read_next_batch()
        except StopIteration:
            self.close()
            return None

    def close(self) -> None:
        """Idempotent: exhausting the reader closes it too."""
        if not self._closed:
            self._closed = True
            self._reader.close()
            self._statement.close()
