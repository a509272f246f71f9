"""The runner's plumbing: the reader thread stops before what it reads from is closed."""

from __future__ import annotations

import threading
import time

from pipeline.convert import prefetch


def test_closing_prefetch_waits_for_the_reader():
    finished = threading.Event()

    def slow():
        try:
            for i in range(100):
                time.sleep(0.2)  # a page being read: cannot be interrupted
                yield i
        finally:
            finished.set()

    items = prefetch(slow(), 1)
    assert next(items) == 0
    items.close()
    assert finished.is_set()  # the producer has left its loop before close() returns


def test_prefetch_hands_errors_to_the_consumer():
    def broken():
        yield 1
        raise OSError(5, "Input/output error")

    got = []
    try:
        for x in prefetch(broken(), 2):
            got.append(x)
    except OSError as e:
        assert e.errno == 5
    else:
        raise AssertionError("the producer's error was lost")
    assert got == [1]
