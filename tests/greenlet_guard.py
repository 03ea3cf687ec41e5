"""The greenlets a test leaves running: the leak guard of the stream and heartbeat tests.

:func:`live_greenlets` finds greenlets by walking the objects the garbage
collector tracks, after a collection. :func:`objects_of_this_test` sets aside
(``gc.freeze()``) every object that existed before the test, so that each walk
and collection during the test covers only what the test made: in a whole-suite
run the heap holds every earlier test's objects, and each full collection of it
took about 0.15 s, three or more times a test.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import greenlet


def live_greenlets() -> set[int]:
    """The ids of the greenlets that have started or may start and have not ended."""
    gc.collect()
    return {
        id(o)
        for o in gc.get_objects()
        if isinstance(o, greenlet.greenlet) and not o.dead and o.parent is not None
    }


def wait_no_new_greenlets(before: set[int], timeout: float = 2) -> set[int]:
    """Let greenlets run until none is live beyond ``before``; return those still live."""
    with gevent.Timeout(timeout, False):
        while live_greenlets() - before:
            gevent.sleep(0.01)
    return live_greenlets() - before


@contextmanager
def objects_of_this_test() -> Iterator[None]:
    """Inside the ``with``, the collector sees only the objects made in it.

    A full collection first: what earlier tests left unreachable goes now,
    as it did when each walk collected the whole heap.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def without_the_cycle_collector() -> Iterator[None]:
    """Inside the ``with``, only reference counting frees objects.

    For the tests that a closed stream leaves no reference cycle: what a
    cycle keeps alive then stays alive. A full collection first, so that
    nothing made before is pending.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
