"""The shared heartbeat loops, run for real in the test process."""

from __future__ import annotations

import gc
import itertools
import threading
import time
from collections.abc import Iterator

import gevent
import greenlet
import pytest

from flask_sse_stream.heartbeat import Heartbeat, for_current_hub
from flask_sse_stream.stream import HEARTBEAT, EventStream

pytestmark = pytest.mark.timeout(10)


def live_greenlets() -> set[int]:
    gc.collect()
    return {
        id(o)
        for o in gc.get_objects()
        if isinstance(o, greenlet.greenlet) and not o.dead and o.parent is not None
    }


def wait_no_new_greenlets(before: set[int], timeout: float = 2) -> set[int]:
    with gevent.Timeout(timeout, False):
        while live_greenlets() - before:
            gevent.sleep(0.01)
    return live_greenlets() - before


@pytest.fixture(autouse=True)
def _no_greenlet_left() -> Iterator[None]:
    gevent.sleep(0)
    before = live_greenlets()
    yield
    assert not wait_no_new_greenlets(before), "a heartbeat loop outlived its test"


class Stream:
    """What the heartbeat needs of a stream, recording each beat."""

    def __init__(self) -> None:
        self.last_write = time.monotonic()
        self.beats: list[float] = []

    def beat(self) -> None:
        self.beats.append(time.monotonic())
        self.last_write = time.monotonic()


@pytest.fixture
def heartbeat() -> Iterator[Heartbeat]:
    heartbeat = Heartbeat()
    yield heartbeat
    heartbeat.stop()


def test_an_idle_stream_is_beaten_at_its_interval(heartbeat: Heartbeat) -> None:
    interval = 0.06
    stream = Stream()
    start = stream.last_write
    heartbeat.add(stream, interval)
    gevent.sleep(interval * 6)
    heartbeat.discard(stream, interval)
    times = [start, *stream.beats]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) >= 4
    # Never silent for longer than the interval (plus scheduling slack),
    # and not beaten before two thirds of it.
    assert max(gaps) <= interval + 0.03, gaps
    assert min(gaps) >= interval * 2 / 3 - 0.005, gaps


def test_a_stream_that_writes_is_not_beaten(heartbeat: Heartbeat) -> None:
    stream = Stream()
    heartbeat.add(stream, 0.06)
    for _ in range(20):
        stream.last_write = time.monotonic()
        gevent.sleep(0.01)
    heartbeat.discard(stream, 0.06)
    assert stream.beats == []


def test_the_last_stream_to_leave_ends_its_loop(heartbeat: Heartbeat) -> None:
    before = live_greenlets()
    first, second = Stream(), Stream()
    heartbeat.add(first, 0.05)
    heartbeat.add(second, 0.05)
    heartbeat.add(Stream(), 0.5)  # another interval, another loop
    assert len(live_greenlets() - before) == 2
    heartbeat.discard(first, 0.05)
    gevent.sleep(0.01)
    assert len(live_greenlets() - before) == 2
    heartbeat.discard(second, 0.05)
    gevent.sleep(0.01)
    assert len(live_greenlets() - before) == 1
    heartbeat.discard(Stream(), 0.5)  # not registered: nothing happens
    heartbeat.discard(second, 0.25)  # no such loop: nothing happens


def test_stop_ends_every_loop(heartbeat: Heartbeat) -> None:
    before = live_greenlets()
    for interval in (0.1, 0.2, 0.3):
        heartbeat.add(Stream(), interval)
    assert len(live_greenlets() - before) == 3
    heartbeat.stop()
    assert not live_greenlets() - before


def test_each_hub_has_its_own_heartbeat() -> None:
    here = for_current_hub()
    assert for_current_hub() is here
    there: list[Heartbeat] = []

    def other_thread() -> None:
        there.append(for_current_hub())
        gevent.get_hub().destroy(destroy_loop=True)

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(5)
    assert there
    assert there[0] is not here


def quiet() -> Iterator[str]:
    gevent.sleep(600)
    yield "never"


@pytest.mark.parametrize("interval", [None, 0])
def test_a_stream_without_heartbeat_starts_no_loop(interval: float | None) -> None:
    before = live_greenlets()
    stream = EventStream(quiet(), encode=str.encode, preamble=b":\n\n", heartbeat=interval)
    try:
        next(stream)
        gevent.sleep(0.05)
        assert len(live_greenlets() - before) == 1  # the producer, no loop
    finally:
        stream.close()


def test_a_streams_heartbeat_loop_ends_with_the_stream() -> None:
    before = live_greenlets()
    stream = EventStream(quiet(), encode=str.encode, preamble=b":\n\n", heartbeat=0.03)
    try:
        next(stream)
        with gevent.Timeout(1):
            assert next(stream) == HEARTBEAT
        assert len(live_greenlets() - before) == 2  # the producer and the loop
    finally:
        stream.close()
    assert not wait_no_new_greenlets(before)
