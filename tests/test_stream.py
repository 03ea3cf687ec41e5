"""EventStream, iterated directly in the test process as a server would.

gevent's sleep, queues and greenlets work without monkey-patching, so the
handler side (``next()``) and the producer greenlet run here for real.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event as Flag
from greenlet_guard import (
    live_greenlets,
    objects_of_this_test,
    wait_no_new_greenlets,
    without_the_cycle_collector,
)

from flask_sse_stream import CloseReason, Event, MemoryBroker
from flask_sse_stream._stream import HEARTBEAT, EventStream, drain, open_streams

pytestmark = pytest.mark.timeout(10)

PREAMBLE = b"retry: 10\n\n"


def encode(item: Any) -> bytes:
    return Event(item).encode()


def frame(data: str) -> bytes:
    return encode(data)


@pytest.fixture(autouse=True)
def _no_greenlet_left() -> Iterator[None]:
    """Every producer and heartbeat greenlet a test starts has ended after it."""
    gevent.sleep(0)
    with objects_of_this_test():
        before = live_greenlets()
        yield
        assert not wait_no_new_greenlets(before), "a greenlet outlived its test"


class Recorder:
    """A source that records how far it got and whether its ``finally`` ran."""

    def __init__(self, items: Iterable[Any] = (), block: float | None = None) -> None:
        self.items = items
        self.block = block
        self.started = Flag()
        self.finalized = Flag()
        self.produced = 0

    def __iter__(self) -> Iterator[Any]:
        self.started.set()
        try:
            for item in self.items:
                yield item
                self.produced += 1
            if self.block is not None:
                gevent.sleep(self.block)
        finally:
            self.finalized.set()


class Reasons(list[CloseReason]):
    def __call__(self, reason: CloseReason) -> None:
        self.append(reason)


def make(source: Iterable[Any], **options: Any) -> EventStream:
    options.setdefault("encode", encode)
    options.setdefault("preamble", PREAMBLE)
    return EventStream(source, **options)


def read_all(stream: EventStream) -> list[bytes]:
    try:
        with gevent.Timeout(5):
            return list(stream)
    finally:
        stream.close()


def test_an_empty_preamble_is_refused() -> None:
    with pytest.raises(ValueError, match="preamble"):
        make([], preamble=b"")


def test_the_preamble_comes_first_without_waiting_for_a_blocked_producer() -> None:
    source = Recorder(block=600)
    stream = make(source)
    try:
        with gevent.Timeout(1):
            assert next(stream) == PREAMBLE
        assert not source.started.is_set()  # it was spawned, not run
        assert source.started.wait(1)
    finally:
        stream.close()
    assert source.finalized.is_set()


def test_a_finite_stream_sends_each_event_then_ends() -> None:
    reasons = Reasons()

    def slow() -> Iterator[str]:
        for text in ("a", "b"):
            gevent.sleep(0.01)
            yield text

    chunks = read_all(make(slow(), on_close=reasons))
    assert chunks == [PREAMBLE, frame("a"), frame("b")]
    assert reasons == [CloseReason.FINISHED]
    assert not open_streams()


def test_a_fast_producer_is_coalesced_into_one_chunk_of_whole_events() -> None:
    items = [f"event {i}" for i in range(10)]
    chunks = read_all(make(items, buffer_size=64))
    assert chunks == [PREAMBLE, b"".join(frame(text) for text in items)]


def test_a_full_buffer_blocks_the_producer() -> None:
    source = Recorder(items=(str(i) for i in range(10_000)))
    stream = make(source, buffer_size=4)
    try:
        next(stream)
        taken = 0
        for _ in range(5):
            chunk = next(stream)
            taken += chunk.count(b"\n\n")
            gevent.sleep(0.01)  # a slow client: the producer gets every chance
            # What is buffered, plus one item held in a blocked put().
            assert source.produced <= taken + 4 + 1
    finally:
        stream.close()
    assert source.finalized.is_set()
    assert source.produced < 100


def test_close_kills_a_blocked_producer_and_runs_its_finally() -> None:
    reasons = Reasons()
    source = Recorder(block=600)
    stream = make(source, on_close=reasons)
    next(stream)
    assert source.started.wait(1)
    assert stream in open_streams()
    stream.close()
    assert source.finalized.is_set()
    # No socket to look at: the server gave up on the response.
    assert reasons == [CloseReason.WRITE_FAILED]
    assert stream not in open_streams()
    stream.close()  # twice is harmless
    with pytest.raises(StopIteration):
        next(stream)


def test_a_closed_stream_is_freed_by_reference_counting_alone() -> None:
    # A producer in a greenlet of ours; tests/test_transport.py covers the
    # inline producer and the subscription. In a reference cycle, a closed
    # stream would keep its request's objects until the collector's next full pass.
    source = Recorder(block=600)
    stream = make(source)
    next(stream)
    assert source.started.wait(1)
    with without_the_cycle_collector():
        stream.close()
        closed = weakref.ref(stream)
        del stream
        assert closed() is None


def test_closing_a_stream_that_never_started_closes_its_source() -> None:
    closed = []

    class Source:
        def __iter__(self) -> Iterator[str]:
            return iter(["never"])

        def close(self) -> None:
            closed.append(True)

    stream = make(Source())
    stream.close()
    assert closed == [True]
    assert stream not in open_streams()
    with pytest.raises(StopIteration):
        next(stream)


def test_a_raising_producer_ends_the_stream_and_logs_the_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reasons = Reasons()

    def raises() -> Iterator[str]:
        yield "first"
        raise RuntimeError("boom")

    logger = logging.getLogger("test_stream.raises")
    with caplog.at_level(logging.ERROR, logger=logger.name):
        chunks = read_all(make(raises(), on_close=reasons, logger=logger))
    assert b"".join(chunks) == PREAMBLE + frame("first")
    assert reasons == [CloseReason.ERROR]
    [record] = caplog.records
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)


def test_an_item_that_cannot_be_encoded_ends_the_stream_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reasons = Reasons()
    logger = logging.getLogger("test_stream.encode")
    with caplog.at_level(logging.ERROR, logger=logger.name):
        chunks = read_all(make(["ok", object()], on_close=reasons, logger=logger))
    assert b"".join(chunks) == PREAMBLE + frame("ok")
    assert reasons == [CloseReason.ERROR]
    assert caplog.records


def test_drain_ends_an_open_stream_with_a_last_retry_field() -> None:
    reasons = Reasons()
    source = Recorder(block=600)
    stream = make(source, on_close=reasons)
    try:
        next(stream)
        assert source.started.wait(1)
        assert drain(retry=500, jitter=0) == 1
        with gevent.Timeout(1):
            rest = list(stream)
    finally:
        stream.close()
    assert rest == [b"retry: 500\n\n"]
    assert source.finalized.is_set()
    assert reasons == [CloseReason.DRAIN]


def test_drain_spreads_the_retry_by_the_jitter() -> None:
    streams = [make(Recorder(block=600)) for _ in range(20)]
    try:
        for stream in streams:
            next(stream)
        assert drain(retry=1000, jitter=1.0) == 20
        with gevent.Timeout(2):
            lasts = [b"".join(stream) for stream in streams]
    finally:
        for stream in streams:
            stream.close()
    delays = {int(last.removeprefix(b"retry: ").removesuffix(b"\n\n")) for last in lasts}
    assert all(1000 <= delay <= 2000 for delay in delays)
    assert len(delays) > 1


def test_drain_ends_a_stream_whose_buffer_is_full() -> None:
    """The wake-up of a full buffer is dropped; the stream must end anyway."""
    stream = make(Recorder(items=(str(i) for i in range(10_000))), buffer_size=4)
    try:
        next(stream)
        next(stream)
        gevent.sleep(0.01)  # the producer refills the buffer and blocks
        assert drain(retry=100, jitter=0) == 1
        with gevent.Timeout(2):
            rest = b"".join(stream)
    finally:
        stream.close()
    assert rest.endswith(b"retry: 100\n\n")


def test_a_heartbeat_is_sent_on_a_quiet_stream() -> None:
    stream = make(Recorder(block=600), heartbeat=0.05)
    try:
        next(stream)
        with gevent.Timeout(1):
            assert next(stream) == HEARTBEAT
            assert next(stream) == HEARTBEAT
    finally:
        stream.close()


def test_a_heartbeat_is_not_sent_while_events_flow() -> None:
    def busy() -> Iterator[str]:
        for i in range(30):
            gevent.sleep(0.01)
            yield str(i)

    chunks = read_all(make(busy(), heartbeat=0.1))
    assert HEARTBEAT not in chunks


class Pair:
    """A connected socket pair: the server's end is watched, the client's closed."""

    def __init__(self) -> None:
        self.server, self.client = socket.socketpair()

    def close(self) -> None:
        self.server.close()
        self.client.close()


@pytest.fixture
def pair() -> Iterator[Pair]:
    pair = Pair()
    yield pair
    pair.close()


def test_the_client_closing_its_socket_cancels_a_blocked_producer(pair: Pair) -> None:
    reasons = Reasons()
    source = Recorder(block=600)
    stream = make(source, sock=pair.server, on_close=reasons)
    try:
        next(stream)
        assert source.started.wait(1)
        pair.client.close()
        with gevent.Timeout(1):
            assert list(stream) == []
        assert source.finalized.wait(1)
    finally:
        stream.close()
    assert reasons == [CloseReason.DISCONNECT]


def test_bytes_from_a_client_that_stays_do_not_end_the_stream(pair: Pair) -> None:
    def later() -> Iterator[str]:
        gevent.sleep(0.1)
        yield "still here"

    stream = make(later(), sock=pair.server)
    try:
        next(stream)
        pair.client.sendall(b"x")
        with gevent.Timeout(1):
            assert next(stream) == frame("still here")
    finally:
        stream.close()
    assert pair.server.recv(1) == b"x"  # peeked, never consumed


def test_a_failed_write_to_a_client_that_left_reports_a_disconnect(pair: Pair) -> None:
    reasons = Reasons()
    stream = make(Recorder(items=["a"], block=600), sock=pair.server, on_close=reasons)
    next(stream)
    pair.client.close()
    stream.close()  # what a server does when its write fails
    assert reasons == [CloseReason.DISCONNECT]


def test_a_write_that_outlasts_the_write_timeout_drops_the_client(pair: Pair) -> None:
    pair.server.settimeout(7)
    reasons = Reasons()
    source = Recorder(block=600)
    stream = make(source, sock=pair.server, write_timeout=0.2, on_close=reasons)
    try:
        next(stream)  # handed to the server, which never asks again: its write hangs
        assert source.started.wait(1)
        assert source.finalized.wait(2)  # the producer was stopped
        pair.client.settimeout(2)
        assert pair.client.recv(16) == b""  # the connection was shut down
        assert pair.server.gettimeout() == 7  # the server's socket settings untouched
    finally:
        stream.close()
    assert reasons == [CloseReason.WRITE_FAILED]


def test_a_client_that_keeps_reading_is_never_dropped_by_the_write_timeout(pair: Pair) -> None:
    def ticks() -> Iterator[str]:
        for i in range(6):
            gevent.sleep(0.05)
            yield str(i)

    stream = make(ticks(), sock=pair.server, write_timeout=0.1)
    assert len(read_all(stream)) == 7  # the preamble and six events, each written at once


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_stream_served_in_a_thread_releases_the_hub_it_made() -> None:
    """As under the werkzeug development server: a thread, and a hub, per request."""
    errors: list[BaseException] = []
    finalized: list[bool] = []

    def serve_one() -> None:
        try:
            source = Recorder(block=600)
            stream = make(source, heartbeat=0.05)
            try:
                next(stream)
                assert next(stream) == HEARTBEAT
            finally:
                stream.close()
            finalized.append(source.finalized.is_set())
        except BaseException as exc:
            errors.append(exc)

    def run_in_thread() -> None:
        thread = threading.Thread(target=serve_one)
        thread.start()
        thread.join(5)
        assert not thread.is_alive()

    run_in_thread()  # the first may load modules that open files
    before = open_fds()
    for _ in range(5):
        run_in_thread()
    assert not errors, errors
    assert finalized == [True] * 6
    assert open_fds() == before


# A broker subscription as the source: the handler serves it itself.


@pytest.fixture
def broker() -> Iterator[MemoryBroker]:
    broker = MemoryBroker(history_size=100, queue_size=100)
    yield broker
    broker.close()


def sub_encode(item: Any) -> bytes:
    return item.encode() if isinstance(item, Event) else encode(item)


def test_a_subscription_is_served_without_a_producer_greenlet(broker: MemoryBroker) -> None:
    stream = make(broker.subscribe(["c"]), encode=sub_encode)
    try:
        before = live_greenlets()
        assert next(stream) == PREAMBLE
        assert live_greenlets() == before  # no producer
        for n in range(3):
            broker.publish("c", Event(str(n)))
        # Queued faster than written: one chunk, whole events, in order.
        chunk = next(stream)
        assert chunk.count(b"\n\n") == 3
        assert chunk.index(b"data: 0") < chunk.index(b"data: 2")
    finally:
        stream.close()


def test_a_subscription_stream_waits_for_the_next_event(broker: MemoryBroker) -> None:
    stream = make(broker.subscribe(["c"]), encode=sub_encode)
    try:
        next(stream)
        later = gevent.spawn_later(0.05, broker.publish, "c", Event("late"))
        with gevent.Timeout(2):
            assert next(stream).endswith(b"data: late\n\n")
        later.join()
    finally:
        stream.close()


def test_a_quiet_subscription_stream_gets_heartbeats(broker: MemoryBroker) -> None:
    stream = make(broker.subscribe(["c"]), encode=sub_encode, heartbeat=0.15)
    try:
        next(stream)
        with gevent.Timeout(2):
            assert next(stream) == HEARTBEAT
            assert next(stream) == HEARTBEAT
    finally:
        stream.close()


def test_drain_ends_a_subscription_stream_with_a_last_retry(broker: MemoryBroker) -> None:
    subscription = broker.subscribe(["c"])
    reasons = Reasons()
    stream = make(subscription, encode=sub_encode, on_close=reasons)
    try:
        next(stream)
        gevent.spawn_later(0.05, drain, 1000, 0.0)
        with gevent.Timeout(2):
            assert list(stream) == [b"retry: 1000\n\n"]
    finally:
        stream.close()
    assert subscription.closed
    assert reasons == [CloseReason.DRAIN]
    assert broker.stats().subscribers == {}


def test_a_client_closing_ends_a_subscription_stream_at_once(
    broker: MemoryBroker, pair: Pair
) -> None:
    subscription = broker.subscribe(["c"])
    reasons = Reasons()
    stream = make(subscription, encode=sub_encode, sock=pair.server, on_close=reasons)
    try:
        next(stream)
        gevent.spawn_later(0.05, pair.client.close)
        with gevent.Timeout(1):
            assert list(stream) == []
    finally:
        stream.close()
    assert reasons == [CloseReason.DISCONNECT]
    assert subscription.closed


def test_a_dropped_subscription_ends_its_stream(broker: MemoryBroker) -> None:
    small = MemoryBroker(history_size=10, queue_size=2)
    subscription = small.subscribe(["c"])
    stream = make(subscription, encode=sub_encode)
    try:
        next(stream)
        for n in range(5):  # the stream is not read meanwhile: it overflows
            small.publish("c", Event(str(n)))
        with gevent.Timeout(2):
            assert list(stream) == []
        assert subscription.dropped
    finally:
        stream.close()
        small.close()


def never_waits(finalized: Flag) -> Iterator[str]:
    try:
        n = 0
        while True:
            n += 1
            yield str(n)
    finally:
        finalized.set()


@pytest.mark.timeout(3)
def test_a_producer_that_never_waits_stops_when_the_client_leaves(pair: Pair) -> None:
    finalized = Flag()
    reasons = Reasons()
    stream = make(never_waits(finalized), sock=pair.server, buffer_size=4, on_close=reasons)
    next(stream)
    next(stream)  # took a full buffer: the producer is about to run on
    pair.client.close()
    started = time.monotonic()
    stream.close()  # as a server does when its write fails
    assert finalized.is_set()
    # Not held up by a producer that runs on without ever letting the kill in.
    assert time.monotonic() - started < 1
    assert reasons == [CloseReason.DISCONNECT]


@pytest.mark.timeout(3)
def test_a_drained_producer_that_never_waits_stops_and_memory_stays_bounded() -> None:
    finalized = Flag()
    stream = make(never_waits(finalized), buffer_size=4)
    try:
        next(stream)
        next(stream)
        assert drain(retry=100, jitter=0) == 1
        started = time.monotonic()
        with gevent.Timeout(2):
            rest = b"".join(stream)
        assert finalized.wait(2)
        assert time.monotonic() - started < 1
    finally:
        stream.close()
    assert rest.endswith(b"retry: 100\n\n")
    assert rest.count(b"data: ") <= 4 + 1  # the buffer, and the item in hand
