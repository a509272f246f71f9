"""An interrupt while the export starts a thread: the thread is stopped and waited for.

The CLI's signal handlers raise in the main thread wherever it is. A run once left a
staging folder behind: SIGHUP came while a stream's thread was starting, inside
``ThreadPoolExecutor.submit``, so the stream was neither cancelled nor waited for and
kept writing into the folder being removed. Here the signal is sent from inside
``Thread.start`` (just after the thread runs), the one moment that used to go wrong.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.checkpoint import Checkpoints
from pipeline.convert import prefetch
from pipeline.errors import Cancelled
from pipeline.interrupts import held
from pipeline.progress import Progress
from pipeline.run import _run_streams
from pipeline.source import Archive
from pipeline.streams import Budget
from pipeline.tuning import Tuning


class Interrupt(Exception):
    pass


@pytest.fixture
def sigterm_raises():
    """SIGTERM raises ``Interrupt`` in the main thread, as the CLI's handler raises its own."""

    def handler(signum, frame):
        raise Interrupt(signum)

    before = signal.signal(signal.SIGTERM, handler)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture
def signal_in_first_start(monkeypatch, sigterm_raises):
    """The first ``Thread.start`` in the test sends this thread SIGTERM once the new thread
    runs, so the handler runs there, before the caller has the thread in hand."""
    real = threading.Thread.start
    started: list[threading.Thread] = []

    def start(self):
        real(self)
        if not started:
            started.append(self)
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(threading.Thread, "start", start)
    return started


def test_held_raises_the_interrupt_after_the_block(sigterm_raises):
    done = []
    with pytest.raises(Interrupt), held():
        signal.raise_signal(signal.SIGTERM)
        done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGTERM).__name__ == "handler"  # put back


def test_held_off_the_main_thread_does_nothing(sigterm_raises):
    seen = []
    thread = threading.Thread(target=lambda: seen.append(held().__enter__() is None))
    thread.start()
    thread.join()
    assert seen == [True]


def test_streams_started_when_an_interrupt_comes_are_stopped_and_waited_for(signal_in_first_start):
    log: list[str] = []

    def stream(name):
        def run(progress, budget):
            log.append(f"{name} started")
            deadline = time.monotonic() + 5
            while not budget.cancel.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # stopping takes a moment: the runner must wait for it
            log.append(f"{name} ended")
            raise Cancelled

        return run

    with ThreadPoolExecutor(1) as converters:
        budget = Budget(Tuning(), converters, threading.Event())
        started = time.monotonic()
        with pytest.raises(Interrupt):
            _run_streams([("posts", stream("posts")), ("likes", stream("likes"))], 2, Progress(), budget, {})
        returned = list(log)
    assert signal_in_first_start, "no thread was started"
    assert time.monotonic() - started < 4, "the streams were not told to stop"
    assert sorted(returned) == sorted(log) and all(
        f"{n} ended" in log for n in ("posts", "likes") if f"{n} started" in log
    )


def test_a_reader_started_when_an_interrupt_comes_is_stopped_and_waited_for(signal_in_first_start):
    closed = []

    def items():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            time.sleep(0.2)
            closed.append(True)

    pages = prefetch(items(), 1)
    with pytest.raises(Interrupt):
        next(pages)
    assert signal_in_first_start and not signal_in_first_start[0].is_alive()
    assert closed == [True]


def test_a_checkpoint_thread_started_when_an_interrupt_comes_is_closed(tmp_path, signal_in_first_start):
    checkpoints = Checkpoints(tmp_path)
    checkpoints.folder.mkdir()
    with pytest.raises(Interrupt):
        checkpoints.save_later("posts", {"phase": "converting"}, [])
    checkpoints.close()
    assert signal_in_first_start and not signal_in_first_start[0].is_alive()


def test_an_archive_copy_started_when_an_interrupt_comes_is_stopped_by_close(
    rollback_archive, tmp_path, signal_in_first_start
):
    """The run's except path closes the archive before it removes the staging folder the copy goes to."""
    archive = Archive(rollback_archive)
    with pytest.raises(Interrupt):
        archive.snapshot(tmp_path / "copy.db")
    archive.close()
    assert signal_in_first_start and not signal_in_first_start[0].is_alive()


def test_held_puts_every_handler_back_when_one_raises_meanwhile(sigterm_raises, monkeypatch):
    """Python may run a pending handler inside ``signal.signal``: the other handlers still go back."""
    real = signal.signal
    restoring = []

    def flaky(signum, handler):
        if restoring and not restoring[0]:
            restoring[0] = True
            raise Interrupt(signum)
        return real(signum, handler)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    monkeypatch.setattr(signal, "signal", flaky)
    with pytest.raises(Interrupt), held():
        restoring.append(False)
    assert {s: signal.getsignal(s) for s in before} == before
