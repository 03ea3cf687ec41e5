"""The shared heartbeat loops, run for real in the test process."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import gevent
import pytest
from greenlet_guard import live_greenlets, objects_of_this_test, wait_no_new_greenlets

from flask_sse_stream._heartbeat import Heartbeat, for_current_hub, interval_for
from flask_sse_stream._stream import HEARTBEAT, EventStream

pytestmark = pytest.mark.timeout(10)


@pytest.fixture(autouse=True)
def _no_greenlet_left() -> Iterator[None]:
    gevent.sleep(0)
    with objects_of_this_test():
        before = live_greenlets()
        yield
        assert not wait_no_new_greenlets(before), "a heartbeat loop outlived its test"


class Stream:
    """What the heartbeat loop needs of a stream, recording each beat and drop."""

    def __init__(self, interval: float | None = 0.06, write_timeout: float | None = None) -> None:
        self.last_write = time.monotonic()
        self.writing_since = 0.0
        self.beat_after = interval * 2 / 3 if interval else None
        self.write_timeout = write_timeout
        self.beats: list[float] = []
        self.dropped: list[float] = []

    def beat(self) -> None:
        self.beats.append(time.monotonic())
        self.last_write = time.monotonic()

    def write_timed_out(self) -> None:
        self.dropped.append(time.monotonic())


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
    first, second = Stream(0.05), Stream(0.05)
    heartbeat.add(first, 0.05)
    heartbeat.add(second, 0.05)
    heartbeat.add(Stream(0.5), 0.5)  # another interval, another loop
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
        heartbeat.add(Stream(interval), interval)
    assert len(live_greenlets() - before) == 3
    heartbeat.stop()
    assert not live_greenlets() - before


def test_a_write_that_outlasts_its_timeout_is_reported_once_the_timeout_has_passed(
    heartbeat: Heartbeat,
) -> None:
    stream = Stream(interval=None, write_timeout=0.09)
    heartbeat.add(stream, 0.09)
    started = stream.writing_since = time.monotonic()
    with gevent.Timeout(1):
        while not stream.dropped:
            gevent.sleep(0.005)
    heartbeat.discard(stream, 0.09)
    # Not before the timeout; within a third of it after (plus slack).
    assert 0.09 <= stream.dropped[0] - started <= 0.09 * 4 / 3 + 0.03
    assert stream.beats == []  # no heartbeat without an interval


def test_a_stream_being_written_gets_no_heartbeat_and_a_finished_write_no_drop(
    heartbeat: Heartbeat,
) -> None:
    stream = Stream(interval=0.03, write_timeout=10)
    heartbeat.add(stream, 0.03)
    stream.writing_since = time.monotonic()  # a long write, within its timeout
    gevent.sleep(0.1)
    assert stream.beats == []
    stream.writing_since = 0.0  # done: now it is idle
    with gevent.Timeout(1):
        while not stream.beats:
            gevent.sleep(0.005)
    heartbeat.discard(stream, 0.03)
    assert stream.dropped == []


@pytest.mark.parametrize(
    ("heartbeat_s", "timeout", "interval"),
    [(15, 30, 15), (15, 1, 1), (None, 30, 30), (15, None, 15), (None, None, None), (0, 0, None)],
)
def test_a_stream_joins_the_loop_of_its_shorter_interval(
    heartbeat_s: float | None, timeout: float | None, interval: float | None
) -> None:
    assert interval_for(heartbeat_s, timeout) == interval


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
