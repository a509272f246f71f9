"""Pages converted on the run's converter threads, and converted chunks handed to the sinks.

``convert_all`` converts a stream's pages in any order (they are sorted next) and
says which prefix of pages is settled (for checkpoints); ``convert_in_order``
keeps page order (ops). A converted page is one Arrow table: the sort keys
(``_ninst``, ``_nsub``, the key), the CSV columns (``csv:<header>``), the JSON
text (``json``) and the typed Parquet columns (``pq:<name>``). ``prefetch`` reads
an iterator ahead on a thread of its own.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import queue
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass
from typing import Generic, TypeVar

import pyarrow as pa

from . import transforms
from .errors import Cancelled, ExportError, PipelineError
from .interrupts import held, uninterrupted
from .parts import Output
from .records import RecordType
from .sort import NINST, NSUB, RID
from .source import Position, key_range, range_metadata
from .tuning import InFlight

T = TypeVar("T")


@dataclass(frozen=True)
class Converters:
    """Where a stream's pages are converted: the run's thread ``pool`` (shared by its streams),
    how many of the stream's pages may be converting at once (``ahead``), the run's bytes in
    flight (``InFlight``; None: no bound) and its cancel flag."""

    pool: ThreadPoolExecutor
    ahead: int
    flight: InFlight | None = None
    cancel: threading.Event | None = None


def convert_in_order(
    rtype: RecordType, pages: Iterable[pa.Table], formats: frozenset[str], converters: Converters
) -> Iterator[tuple[pa.Table, tuple[pa.Table, pa.Table]]]:
    """Like ``convert_all``, but results come back in page order (at most ``ahead`` ahead)."""
    pool, ahead = converters.pool, converters.ahead
    costs = _Costs(converters.flight, converters.cancel)
    running: collections.deque[tuple[pa.Table, Future[tuple[pa.Table, pa.Table]]]] = collections.deque()
    try:
        for page in pages:
            while not costs.admit(page):
                if running:
                    done, future = running.popleft()
                    yield from costs.hand(future, (done, future.result()))
            running.append((page, costs.submit(pool, rtype, page, formats)))
            if len(running) > ahead:
                done, future = running.popleft()
                yield from costs.hand(future, (done, future.result()))
        while running:
            done, future = running.popleft()
            yield from costs.hand(future, (done, future.result()))
    finally:
        for _, f in running:
            f.cancel()
        costs.give_back()


KEY = "_key"
CSV_PREFIX = "csv:"
PARQUET_PREFIX = "pq:"


def convert_all(
    rtype: RecordType, pages: Iterable[pa.Table], formats: frozenset[str], converters: Converters
) -> Iterator[tuple[Position, int, Position | None, tuple[pa.Table, pa.Table]]]:
    """Convert pages on the converter pool (Polars and pyarrow release the GIL), at most
    ``converters.ahead`` pages of this stream converting. Results come back in any order: they are sorted next.

    Each comes as (its page's position, its page's rows, settled, result): ``settled`` is
    the position of the last page of the prefix of pages whose results have all come
    back, once this one is taken, if no later page's result has come back yet (the pages
    taken are exactly that prefix: a checkpoint can name it); else None.

    ``converters.flight``: the run's bound on the bytes of pages in flight, shared with its
    other streams: a page waits until it fits.
    """
    pool, ahead = converters.pool, converters.ahead
    costs = _Costs(converters.flight, converters.cancel)
    running: set[Future[tuple[pa.Table, pa.Table]]] = set()
    # Pages by number, in submission order; a taken future is not kept (it holds its result).
    order: collections.deque[tuple[int, Position]] = collections.deque()
    info: dict[Future[tuple[pa.Table, pa.Table]], tuple[int, Position, int]] = {}
    taken: set[int] = set()

    def take(f: Future[tuple[pa.Table, pa.Table]]) -> tuple[Position, int, Position | None, tuple[pa.Table, pa.Table]]:
        result = f.result()
        number, position, n = info.pop(f)
        taken.add(number)
        settled = None
        while order and order[0][0] in taken:
            done, settled = order.popleft()
            taken.discard(done)
        return position, n, settled if not taken else None, result

    try:
        for number, page in enumerate(pages):
            while not costs.admit(page):  # the run's pages in flight are at their limit: take ours as they come
                if running:
                    done, running = wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
                    for f in done:
                        yield from costs.hand(f, take(f))
            future = costs.submit(pool, rtype, page, formats)
            position = Position.of(page)
            info[future] = (number, position, page.num_rows)
            order.append((number, position))
            running.add(future)
            if len(running) >= ahead:
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    yield from costs.hand(f, take(f))
        for f in as_completed(running):
            yield from costs.hand(f, take(f))
    finally:
        for f in running:
            f.cancel()
        costs.give_back()


class _Costs:
    """A stream's pages in the run's ``InFlight`` bytes: each page is admitted with its
    expected cost (its bytes and its converted rows', at the largest ratio of the two this
    stream has seen; 2 before the first), set to the true cost once converted, and given
    back once the caller is done with its result (when it asks for the next one)."""

    def __init__(self, flight: InFlight | None, cancel: threading.Event | None):
        self._flight = flight
        self._cancel = cancel
        self._ratio = 2.0  # converted bytes per page byte until one is seen; all three formats take ~1.6
        self._seen = False
        self._waiting: int | None = None  # the cost of the page admitted, not yet submitted
        self._pending_bytes = 0
        self._cost: dict[Future[tuple[pa.Table, pa.Table]], int] = {}
        self._page_bytes: dict[Future[tuple[pa.Table, pa.Table]], int] = {}

    def admit(self, page: pa.Table) -> bool:
        """Whether ``page`` fits now (if not, the caller takes results and asks again)."""
        if self._flight is None:
            return True
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled
        if self._waiting is not None:
            raise RuntimeError("a page was admitted and not submitted")  # its cost would never be given back
        size = page.nbytes
        cost = int(size * (1 + self._ratio))
        if self._flight.try_take(cost):
            self._waiting = cost
            self._pending_bytes = size
            return True
        if not self._cost:  # nothing of ours to take: other streams hold it all
            self._flight.wait(0.1)
        return False

    def submit(
        self, pool: ThreadPoolExecutor, rtype: RecordType, page: pa.Table, formats: frozenset[str]
    ) -> Future[tuple[pa.Table, pa.Table]]:
        """The conversion of the page just admitted, on ``pool``, holding its cost until handed."""
        with held():  # on the main thread (one stream at a time) the pool may start a thread
            future = pool.submit(_convert, rtype, page, formats)
            if self._waiting is not None:
                self._cost[future] = self._waiting
                self._page_bytes[future] = self._pending_bytes
                self._waiting = None
        return future

    def hand(self, future: Future[tuple[pa.Table, pa.Table]], item: T) -> Generator[T, None, None]:
        """Yield ``item`` (``future``'s result); its cost is given back when the caller resumes."""
        cost = self._cost.pop(future, None)
        if cost is not None and self._flight is not None:
            rows, bad = future.result()
            converted = rows.nbytes + bad.nbytes
            page = self._page_bytes.pop(future)
            if page:
                ratio = converted / page
                self._ratio, self._seen = (max(self._ratio, ratio) if self._seen else ratio), True
            true = page + converted
            self._flight.grow(true - cost)
            cost = true
        try:
            yield item
        finally:
            if cost is not None and self._flight is not None:
                self._flight.give(cost)

    def give_back(self) -> None:
        """What is still held: pages not converted or not taken (the stream failed or stopped)."""
        if self._flight is not None:
            self._flight.give(sum(self._cost.values()) + (self._waiting or 0))
        self._cost.clear()
        self._waiting = None


def _convert(rtype: RecordType, page: pa.Table, formats: frozenset[str]) -> tuple[pa.Table, pa.Table]:
    """One page converted: (sort keys + CSV columns + JSON text, rejects + sort keys)."""
    try:
        out = transforms.transform(rtype, page, formats)
    except PipelineError:
        raise
    except Exception as e:
        raise ExportError(
            f"converting rows failed: {e}", record_type=rtype.name, key_range=page_range(page, rtype.key)
        ) from e
    ninst, nsub, rid = page.column(NINST), page.column(NSUB), page.column(RID)
    cols, names = [ninst, nsub, rid], [NINST, NSUB, RID]
    if sort_key(rtype, formats) == KEY:
        cols.append(page.column(rtype.key))
        names.append(KEY)
    if out.csv is not None:
        cols += out.csv.columns
        names += [CSV_PREFIX + n for n in out.csv.schema.names]
    if out.json is not None:
        cols.append(out.json.column(0))
        names.append("json")
    if out.parquet is not None:
        cols += out.parquet.columns
        names += [PARQUET_PREFIX + n for n in out.parquet.schema.names]
    converted = pa.Table.from_arrays(cols, names=names)
    bad = pa.Table.from_batches([out.rejects])
    rows = bad.column("_row")
    bad = bad.append_column(NINST, ninst.take(rows)).append_column(NSUB, nsub.take(rows))
    bad = bad.append_column(KEY, bad.column("key")).append_column(RID, rid.take(rows))
    return converted, bad


@functools.cache
def sort_key(rtype: RecordType, formats: frozenset[str]) -> str:
    """The column converted rows are sorted by after the instant: the key as stored.

    A CSV export already carries it as a text column (nulls stay null, text as
    stored), so it is not spilled twice (15% of a CSV export's spill).
    """
    if "csv" in formats:
        text = {c.name for c in rtype.columns if c.kind == "text"}
        for c in rtype.csv:
            if c.source == rtype.key and c.source in text and c.null_as is None:
                return CSV_PREFIX + c.header
    return KEY


def page_range(page: pa.Table, key: str) -> str:
    keys = page.column(key)
    return f"rows {keys[0].as_py()} … {keys[-1].as_py()} in table order" if page.num_rows else "empty page"


def write_chunk(
    sinks: Mapping[str, Output], formats: Sequence[str], chunk: pa.RecordBatch, rtype: RecordType, key: str
) -> None:
    """A converted chunk into each format's sink (CSV: the ``csv:`` columns; Parquet: the
    ``pq:`` columns; JSON: ``json``)."""
    fmt = formats[0]
    try:
        for fmt in formats:
            if fmt in ("csv", "parquet"):
                prefix = CSV_PREFIX if fmt == "csv" else PARQUET_PREFIX
                names = [n for n in chunk.schema.names if n.startswith(prefix)]
                part = chunk.select(names).rename_columns([n[len(prefix) :] for n in names])
            else:
                part = chunk.select(["json"])
            sinks[fmt].write(part)
    except OSError as e:
        span = key_range(chunk.replace_schema_metadata(range_metadata(chunk, key)))
        raise ExportError(
            f"writing the export failed: {e.strerror or e} ({sinks[fmt].path})", record_type=rtype.name, key_range=span
        ) from None


def prefetch(items: Iterable[T], depth: int) -> Generator[T, None, None]:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead."""
    q: queue.Queue[_Item[T] | _Failed | None] = queue.Queue(maxsize=depth)  # None: the end
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put(_Item(item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(None)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(_Failed(e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's cleanup runs here, in its own thread
                close()

    thread = threading.Thread(target=produce, name="reader", daemon=True)
    try:
        with held():  # started, then waited for below, whatever comes meanwhile
            thread.start()
        while True:
            got = q.get()
            if isinstance(got, _Item):
                yield got.value
            elif isinstance(got, _Failed):
                raise got.error
            else:
                return
    finally:
        stop.set()

        def drained() -> bool:  # a blocked producer sees the stop flag once there is room
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.1)
            return not thread.is_alive()

        # The caller closes what the thread reads from: wait for it to end.
        if thread.is_alive():
            uninterrupted(drained)


@dataclass(frozen=True)
class _Item(Generic[T]):
    value: T


@dataclass(frozen=True)
class _Failed:
    error: BaseException
