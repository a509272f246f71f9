"""Interrupts (SIGINT, SIGTERM, SIGHUP) and the threads an export starts and stops.

The CLI turns these signals into exceptions raised in the main thread, wherever it
is. Two places must not be cut short by one: starting a thread (``held``: a
thread started but not yet registered would be neither stopped nor waited for,
and could write into a staging folder being removed) and waiting for threads
that are stopping (``uninterrupted``).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

_SIGNALS = frozenset(getattr(signal, s) for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s))


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Interrupts held back, not lost, for the block: the first one that arrives meanwhile
    is raised again once the block is done, to the handler that was there. A no-op off the
    main thread (where Python cannot set handlers, and runs none). Handlers put there from
    outside Python are left alone. (Blocking the signals in the thread would not do: a
    thread that does not block them, such as a progress display's, takes them for it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, frame: object) -> None:
        caught.append(signum)

    try:
        with _swapped(note):
            yield
    finally:
        if caught:
            signal.raise_signal(caught[0])


@contextlib.contextmanager
def ignored() -> Iterator[None]:
    """Interrupts ignored for the block (the publishing swap: one that arrives meanwhile is
    taken as arriving after it); a no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with _swapped(signal.SIG_IGN):
        yield


@contextlib.contextmanager
def _swapped(handler: Any) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP go to ``handler`` for the block, then every handler is put
    back (``_restore``); those set from outside Python are left alone (they cannot be put back)."""
    saved: dict[int, Any] = {}
    try:
        for s in _SIGNALS:
            if signal.getsignal(s) is not None:
                saved[s] = signal.signal(s, handler)
        yield
    finally:
        _restore(saved)


def _restore(saved: dict[int, Any]) -> None:
    """Put every handler back, even if a signal's handler raises meanwhile (Python may run a
    pending one inside ``signal.signal``); that first exception is raised once all are back."""
    pending: BaseException | None = None
    for s, handler in saved.items():
        while True:
            try:
                signal.signal(s, handler)
                break
            except BaseException as e:
                pending = pending or e
    if pending is not None:
        raise pending


def uninterrupted(step: Callable[[], bool]) -> None:
    """Call ``step`` until it returns True, through interrupts: threads being stopped are
    waited for even if another Ctrl-C or signal comes meanwhile; the first such interrupt
    is raised once they are done."""
    pending: BaseException | None = None
    while True:
        try:
            if step():
                break
        except BaseException as e:
            pending = pending or e
    if pending is not None:
        raise pending
