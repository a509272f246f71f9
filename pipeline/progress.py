"""Progress on stderr: a rich bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import os
import sys
import threading
import time
from enum import StrEnum
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import TaskID

PLAIN_INTERVAL = 5.0


class Phase(StrEnum):
    """What a stream is doing (``stream_phase`` events carry these values)."""

    CONVERTING = "converting"  # a record type: reading and converting, into the sort
    WRITING = "writing"  # a record type: its sorted rows into the files; the ops: their pages
    COPYING = "copying"  # the media files
    DONE_BEFORE = "done before"  # finished before the interruption (--resume): its files are kept
    DONE = "done"


class Progress:
    """Interface used by the runner; this base reports nothing (``--quiet``).

    ``start`` may be called again for the next phase (e.g. writing after converting);
    a stream's progress (``Streams.stream``) is told its phases with ``phase``.
    """

    def start(self, label: str, total: int) -> None: ...

    def phase(self, phase: Phase, total: int) -> None:
        """A stream began ``phase``, with ``total`` units of work."""
        self.start(str(phase), total)

    def stream_advance(self, stream: str, n: int) -> None:
        """``n`` more units done by ``stream`` (for displays with a row per stream)."""

    def advance(self, n: int) -> None: ...

    def set_total(self, total: int) -> None:
        """The exact total, once known (the first one may be SQLite's estimate)."""

    def set_label(self, label: str) -> None:
        """A new description for what is being done, same count."""

    def stream_phase(self, stream: str, phase: str, total: int) -> None:
        """A stream (a record type, the ops, the media) began a phase; ``done`` when it ended."""

    def stop(self) -> None: ...


class JsonLog:
    """One JSON object per line (``--log-format json``): ``ts`` (UTC, ms), ``run_id``, ``event``, fields.

    Thread-safe; each line is written and flushed whole.
    """

    def __init__(self, stream: TextIO | None = None, run_id: str | None = None):
        import uuid

        self.stream = stream or sys.stderr
        self.run_id = run_id or uuid.uuid4().hex[:16]
        self._lock = threading.Lock()

    def emit(self, event: str, **fields: object) -> None:
        import json
        from datetime import UTC, datetime

        ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        line = json.dumps({"ts": ts, "run_id": self.run_id, "event": event, **fields}, ensure_ascii=False, default=str)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class _TimedProgress(Progress):
    """Counts, and a timer thread calling ``_tick`` at least every ``interval`` seconds, so a
    slow batch still reports; ``start`` begins a phase (its count and clock from zero)."""

    def __init__(self, interval: float = PLAIN_INTERVAL):
        self._interval = interval
        self._done = self._total = 0
        self._label = ""
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, label: str, total: int) -> None:
        self._label, self._total, self._done, self._t0 = label, total, 0, time.monotonic()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()

    def advance(self, n: int) -> None:
        self._done += n

    def set_total(self, total: int) -> None:
        self._total = total

    def set_label(self, label: str) -> None:
        self._label = label

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def _tick(self) -> None:
        raise NotImplementedError

    def _stopped(self) -> None:
        """After the timer thread has ended."""

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._stopped()


class JsonProgress(_TimedProgress):
    """Progress as ``progress`` events at least every ``interval`` seconds, and
    ``stream_phase`` events as streams start, change phase and end."""

    def __init__(self, log: JsonLog, interval: float = PLAIN_INTERVAL):
        super().__init__(interval)
        self._log = log

    def stream_phase(self, stream: str, phase: str, total: int) -> None:
        self._log.emit("stream_phase", stream=stream, phase=phase, total=total)

    def _tick(self) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        self._log.emit(
            "progress",
            label=self._label,
            records=self._done,
            total=self._total,
            records_per_s=round(self._done / elapsed, 1),
            elapsed_s=round(elapsed, 3),
        )

    def _stopped(self) -> None:
        self._tick()  # the last count


class PlainProgress(_TimedProgress):
    """One line at least every ``interval`` seconds, from a timer thread so a slow batch still reports."""

    def __init__(self, stream: TextIO | None = None, interval: float = PLAIN_INTERVAL):
        super().__init__(interval)
        self._stream = stream or sys.stderr

    def _tick(self) -> None:
        self._line()

    def _line(self) -> None:
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = self._done / elapsed
        pct = 100.0 * self._done / self._total if self._total else 100.0
        eta = (self._total - self._done) / rate if rate > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        print(
            f"{self._label}: {self._done:,}/{self._total:,} records ({pct:.0f}%), {rate:,.0f} records/s, ETA {eta_s}",
            file=self._stream,
            flush=True,
        )


class RichProgress(Progress):
    """A rich progress bar (done/total, rate, ETA), refreshed by rich's own thread."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,
            transient=True,
        )
        self._task: TaskID | None = None
        self._t0 = 0.0
        self._rows: dict[str, tuple[TaskID, float]] = {}  # stream -> (its task, when its phase began)

    def start(self, label: str, total: int) -> None:
        if self._task is None:
            self._bar.start()
        else:
            self._bar.update(self._task, visible=False)
        self._t0 = time.monotonic()
        self._task = self._bar.add_task("all" if self._rows else label, total=total, rate="")

    def advance(self, n: int) -> None:
        assert self._task is not None
        self._advance(self._task, n, self._t0)

    def _advance(self, task_id: TaskID, n: int, t0: float) -> None:
        task = next(t for t in self._bar.tasks if t.id == task_id)
        rate = (task.completed + n) / max(time.monotonic() - t0, 1e-9)
        self._bar.update(task_id, advance=n, rate=f"{rate:,.0f} rec/s")

    def set_total(self, total: int) -> None:
        assert self._task is not None
        self._bar.update(self._task, total=total)

    def set_label(self, label: str) -> None:
        assert self._task is not None
        if not self._rows:
            self._bar.update(self._task, description=label)

    def stream_phase(self, stream: str, phase: str, total: int) -> None:
        """One row per stream (``posts: writing``); the first row, ``all``, sums them."""
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task("all", total=0, rate="")
            self._t0 = time.monotonic()
        self._bar.update(self._task, description="all")
        row = self._rows.get(stream)
        if row is not None and phase == Phase.DONE:  # the row keeps its count, full
            done = next(t for t in self._bar.tasks if t.id == row[0]).completed
            self._bar.update(row[0], total=max(done, 1), completed=max(done, 1), description=f"{stream}: done")
            return
        if row is None:
            self._rows[stream] = (self._bar.add_task(f"{stream}: {phase}", total=total, rate=""), time.monotonic())
        else:
            self._bar.reset(row[0], total=total, description=f"{stream}: {phase}", rate="")
            self._rows[stream] = (row[0], time.monotonic())

    def stream_advance(self, stream: str, n: int) -> None:
        row = self._rows.get(stream)
        if row is not None:
            self._advance(row[0], n, row[1])

    def stop(self) -> None:
        self._bar.stop()


def for_terminal(quiet: bool, stream: TextIO | None = None) -> Progress:
    """The progress reporter that fits: none, rich on a TTY, plain lines otherwise.

    ``PIPELINE_PROGRESS_INTERVAL`` (seconds, default 5) sets how often plain lines come.
    """
    if quiet:
        return Progress()
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress()
    return PlainProgress(stream, interval_from_env())


def interval_from_env() -> float:
    """``PIPELINE_PROGRESS_INTERVAL`` in seconds; the default (5 s, with a warning) if it is not a number."""
    text = os.environ.get("PIPELINE_PROGRESS_INTERVAL")
    if text is None:
        return PLAIN_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86_400:  # NaN and infinity included
        print(f"pipeline: warning: PIPELINE_PROGRESS_INTERVAL={text!r} is not a number of seconds from 0 to a day;"
              f" using {PLAIN_INTERVAL:g}", file=sys.stderr)  # fmt: skip
        return PLAIN_INTERVAL
    return value


class Streams:
    """Several export streams reporting into one display: each stream's phase, and the total.

    ``stream(name)`` gives each stream its own ``Progress``; the display's
    label lists every running stream (``posts: writing 40% · likes: converting
    10%``) and its count is the sum over all of them. Thread-safe.
    """

    def __init__(self, display: Progress):
        self._display = display
        self._lock = threading.Lock()
        self._states: dict[str, list] = {}  # name -> [phase, done, total, finished work]
        self._started = False

    def stream(self, name: str) -> Progress:
        return _StreamProgress(self, name)

    def _update(self, name: str, phase: Phase | None = None, total: int | None = None, done: int = 0) -> None:
        with self._lock:
            state = self._states.setdefault(name, ["", 0, 0, 0])
            if phase is not None:  # a new phase: the last one's work is done
                state[3] += state[2]
                state[0], state[1], state[2] = phase, 0, total or 0
                self._display.stream_phase(name, phase, total or 0)
            elif total is not None:
                state[2] = total
            state[1] += done
            grand_total = sum(s[2] + s[3] for s in self._states.values())
            label = " · ".join(
                f"{n}: {s[0]} {100 * s[1] // s[2] if s[2] else 100}%" for n, s in self._states.items() if s[0] != "done"
            )
            if not self._started:
                self._started = True
                self._display.start(label or "export", grand_total)
            else:
                self._display.set_total(grand_total)
                self._display.set_label(label or "export")
            if done:
                self._display.advance(done)
                self._display.stream_advance(name, done)

    def stop(self) -> None:
        self._display.stop()


class _StreamProgress(Progress):
    def __init__(self, streams: Streams, name: str):
        self._streams, self._name = streams, name

    def start(self, label: str, total: int) -> None:
        self.phase(Phase(label), total)

    def phase(self, phase: Phase, total: int) -> None:
        self._streams._update(self._name, phase=phase, total=total)

    def advance(self, n: int) -> None:
        self._streams._update(self._name, done=n)

    def set_total(self, total: int) -> None:
        self._streams._update(self._name, total=total)

    def stop(self) -> None:
        self._streams._update(self._name, phase=Phase.DONE, total=0)


class FleetProgress:
    """Progress across archives (``export_many``); this base reports nothing (``--quiet``).

    ``archive`` is called as each archive ends (``done`` of the ``total`` so far,
    ``failed`` of them failed), ``retry`` when a task whose worker died is run again.
    """

    def start(self, total: int) -> None:
        self._total, self._done, self._failed, self._t0 = total, 0, 0, time.monotonic()

    def archive(self, run: object, done: int, failed: int) -> None:
        self._done, self._failed = done, failed

    def retry(self, archive: str, attempt: int, error: str) -> None: ...

    def stop(self) -> None: ...

    def _rate(self) -> float:
        return self._done / max(time.monotonic() - self._t0, 1e-9)


class PlainFleet(FleetProgress):
    """A line at least every ``interval`` seconds (from a timer), and one per retry."""

    def __init__(self, stream: TextIO | None = None, interval: float = PLAIN_INTERVAL):
        self._stream = stream or sys.stderr
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, total: int) -> None:
        super().start(total)
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._line()

    def _line(self) -> None:
        print(
            f"archives: {self._done:,}/{self._total:,} done, {self._failed:,} failed, {self._rate():.2f} archives/s",
            file=self._stream,
            flush=True,
        )

    def retry(self, archive: str, attempt: int, error: str) -> None:
        print(f"pipeline: warning: retrying {archive} (attempt {attempt} died: {error})", file=self._stream, flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class RichFleet(FleetProgress):
    """A rich bar: archives done/total, archives/s, failures so far, ETA."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("[bold]archives"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} {task.fields[failed]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,
            transient=True,
        )
        self._task: TaskID | None = None

    def start(self, total: int) -> None:
        super().start(total)
        self._bar.start()
        self._task = self._bar.add_task("archives", total=total, rate="", failed="")

    def archive(self, run: object, done: int, failed: int) -> None:
        super().archive(run, done, failed)
        assert self._task is not None
        failures = f"[red]{failed:,} failed" if failed else ""
        self._bar.update(self._task, completed=done, rate=f"{self._rate():.2f} archives/s", failed=failures)

    def retry(self, archive: str, attempt: int, error: str) -> None:
        self._bar.console.print(f"pipeline: warning: retrying {archive} (attempt {attempt} died: {error})")

    def stop(self) -> None:
        self._bar.stop()


class JsonFleet(FleetProgress):
    """``archive_end`` per archive (its line of runs.json), ``retry``, and ``progress``
    (done, total, failed, archives/s) at least every ``interval`` seconds unless quiet."""

    def __init__(self, log: JsonLog, interval: float | None = PLAIN_INTERVAL):
        self._log = log
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, total: int) -> None:
        super().start(total)
        if self._interval is not None:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            self._tick()

    def _tick(self) -> None:
        self._log.emit(
            "progress", done=self._done, total=self._total, failed=self._failed, archives_per_s=round(self._rate(), 3)
        )

    def archive(self, run: object, done: int, failed: int) -> None:
        from dataclasses import asdict, is_dataclass

        super().archive(run, done, failed)
        self._log.emit("archive_end", **(asdict(run) if is_dataclass(run) else {"run": run}))  # type: ignore[arg-type]

    def retry(self, archive: str, attempt: int, error: str) -> None:
        self._log.emit("retry", archive=archive, attempt=attempt, error=error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            self._tick()


def for_fleet(quiet: bool, log: JsonLog | None = None, stream: TextIO | None = None) -> FleetProgress:
    """The fleet display that fits: JSON events with a log, else none when quiet, rich on a
    TTY, plain lines otherwise (every ``PIPELINE_PROGRESS_INTERVAL`` seconds)."""
    if log is not None:
        return JsonFleet(log, None if quiet else interval_from_env())
    if quiet:
        return FleetProgress()
    stream = stream or sys.stderr
    if stream.isatty():
        return RichFleet()
    return PlainFleet(stream, interval_from_env())
