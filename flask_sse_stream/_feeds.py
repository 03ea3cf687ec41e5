"""The ways a stream gets its items: one small class each.

A feed fills the stream's state machine (:class:`~flask_sse_stream._core.StreamCore`)
with encoded frames and tells it when the producer finished or failed. The
stream's handler calls :meth:`Feed.wait` when the machine has nothing to
write; anything else calls :meth:`Feed.wake` to end that wait.

* :class:`SubscriptionFeed`: a broker subscription, served by the handler
  itself: the subscription's queue is the buffer. Where the stream may
  write beside the server, the subscription's *sink* writes new events from
  the hub and the handler sleeps on.
* :class:`GreenletFeed`: the view's generator in a greenlet of ours, which
  waits when the buffer is full (a slow client back-pressures it). Stopped by
  killing that greenlet. Works on every WSGI server.
* :class:`InlineFeed`: the view's generator run by the handler greenlet
  itself, where one of our handlers serves the request: no second greenlet.
  Items made without waiting are collected into one chunk; when the
  producer waits, what it made goes beside the server at once. Stopped by
  the transport, which raises in the handler greenlet where it waits.

Both generator feeds run the view's generator through a :class:`Producer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import gevent
from gevent.hub import Waiter

from ._broker import Subscription
from ._core import IDLE, PENDING
from ._transport import Interrupted, Transport

if TYPE_CHECKING:
    from ._stream import EventStream


class Feed(Protocol):
    """What the stream needs from the source of its items."""

    def wait(self) -> None:
        """Handler: wait until there may be something to write (or to stop)."""

    def wake(self) -> None:
        """Anyone: end the handler's :meth:`wait`; never blocks."""

    def taken(self) -> None:
        """Handler: the pending frames were handed to the server."""

    def stop(self) -> None:
        """Anyone: stop producing (a reason from outside); never blocks."""

    def close(self) -> None:
        """Handler, at the end: stop, and wait for the producer's cleanup."""


class Producer:
    """The view's generator as a feed runs it: encoded items, then its cleanup, once.

    Deliberately not a generator: a parked greenlet keeps the C stack of
    every generator it is suspended in, and each layer between the handler
    and the view's own generator costs every idle stream that much more.
    Make it, and call it, inside :meth:`EventStream.run`.
    """

    __slots__ = ("_stream", "encode", "ended", "items")

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream
        self.encode = stream.encode
        """Turns an item into its frame."""
        self.items = stream.begin_producing()
        """The view's generator (its iterator): ``encode(next(items))`` is the next frame."""
        self.ended = False

    def next_frame(self) -> bytes | None:
        """The next item, encoded; ``None`` once the producer is done and cleaned up.

        :raises gevent.GreenletExit: where the producer was stopped (cleaned
            up too; whoever stopped it has set the reason).
        """
        try:
            return self.encode(next(self.items))
        except BaseException as error:
            self.settle(error)
        self.close()
        return None

    def settle(self, error: BaseException) -> None:
        """Tell the stream how ``encode(next(items))`` ended: returned or raised.

        Re-raises, after the cleanup, what stopped the producer from outside
        (:class:`gevent.GreenletExit`) and what is not an ``Exception``.
        """
        if isinstance(error, StopIteration):
            self._stream.core.finished()
        elif isinstance(error, Exception):
            self._stream.producer_failed(error)
        else:
            if isinstance(error, gevent.GreenletExit):
                self.close()
            try:
                raise error
            finally:
                # Or the error's traceback holds this frame, which holds the error:
                # a cycle that keeps the stream for the collector's next full pass.
                del error

    def close(self) -> None:
        """Close the view's generator now (its ``finally`` runs), then the cleanup."""
        if not self.ended:
            self.ended = True
            self._stream.end_producing(self.items)


class SubscriptionFeed:
    """A broker subscription, served by the handler greenlet itself."""

    __slots__ = ("_core", "_encode", "_stream", "_sub")

    def __init__(self, stream: EventStream, sub: Subscription, *, beside: bool) -> None:
        self._stream = stream
        self._sub = sub
        # Kept here: the sink runs once per subscriber per publish.
        self._core = stream.core
        self._encode = stream.encode
        if beside:
            sub.set_sink(self._deliver)

    def _take(self) -> bool:
        """Move queued events into the machine; ``True`` if the handler has work."""
        core = self._core
        if core.full:
            return True
        sub = self._sub
        events = sub.get_batch(core.max_frames)
        if events:
            encode = self._encode
            try:
                if len(events) == 1:
                    core.item(encode(events[0]))
                else:
                    core.item(b"".join([encode(event) for event in events]))
            except Exception as error:
                self._stream.producer_failed(error)
            return True
        if sub.closed:
            core.finished()  # dropped as too slow, or its broker closed
            return True
        return False

    def wait(self) -> None:
        if self._take():
            return
        stream = self._stream
        stream.parked = True
        try:
            self._sub.wait()
        finally:
            stream.parked = False

    def _deliver(self) -> bool:
        # The sink, in the hub: False makes the subscription wake the handler.
        stream = self._stream
        core = self._core
        if core.state is not IDLE or not stream.parked:
            return False
        return self._take() and stream.flush_beside() and core.state is IDLE

    def wake(self) -> None:
        self._sub.interrupt()

    def taken(self) -> None:
        pass

    def stop(self) -> None:
        pass  # nothing runs: the handler ends on its next turn

    def close(self) -> None:
        self._sub.set_sink(None)


class GreenletFeed:
    """The view's generator, in a greenlet of ours."""

    __slots__ = ("_greenlet", "_room", "_stream", "_waiter")

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream
        self._waiter: Waiter[Any] | None = None
        self._room: Waiter[Any] | None = None
        self._greenlet: gevent.Greenlet[..., None] | None = gevent.spawn(stream.run, self._produce)

    def _produce(self) -> None:
        stream = self._stream
        core = stream.core
        producer = Producer(stream)
        try:
            while (frame := producer.next_frame()) is not None:
                while core.full and core.reason is None:
                    room = self._room = Waiter(stream.hub)
                    room.get()  # switched by taken(), once the handler took the frames
                core.item(frame)
                self.wake()
                if core.reason is not None:
                    # Ended from outside: a producer that never waits would
                    # never see the kill, and a drained stream takes no more.
                    break
        except gevent.GreenletExit:
            return  # killed (while waiting for room, say): closed below
        finally:
            producer.close()  # stopped early: the cleanup runs here
        self.wake()  # after the last frame: the handler ends

    def wait(self) -> None:
        stream = self._stream
        waiter = self._waiter = Waiter(stream.hub)
        stream.parked = True
        try:
            waiter.get()
        finally:
            stream.parked = False
            self._waiter = None

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            # Waiter.switch must run in the hub.
            self._stream.hub.loop.run_callback(waiter.switch, None)

    def taken(self) -> None:
        room = self._room
        if room is not None:
            self._room = None
            self._stream.hub.loop.run_callback(room.switch, None)

    def stop(self) -> None:
        greenlet = self._greenlet
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill(block=False)

    def close(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=5)


class InlineFeed:
    """The view's generator, run by the handler greenlet itself."""

    __slots__ = (
        "_done",
        "_flushing",
        "_interrupting",
        "_producer",
        "_stream",
        "_transport",
        "_yield",
    )

    def __init__(self, stream: EventStream, transport: Transport) -> None:
        self._stream = stream
        self._transport = transport
        self._producer: Producer | None = None
        self._done = False
        self._flushing = False
        self._interrupting = False
        self._yield = False

    def wait(self) -> None:
        stream = self._stream
        core = stream.core
        producer = self._producer
        if producer is None and not self._done:
            producer = self._producer = stream.run(self._make_producer)
        if self._yield:
            # The last chunk was full: the producer never waits, so let the
            # other greenlets have a turn, as a full buffer would.
            self._yield = False
            gevent.sleep(0)
        if producer is None or core.reason is not None or core.full:
            return
        # The loop runs once per item of a producer that never waits: it
        # calls the producer itself and leaves its ends to Producer.settle.
        # Each call goes into the view's contexts on its own, through
        # run_in (Context.run, in C), not the loop inside one trip: where
        # the producer waits, the handler's C stack then holds no second
        # interpreter frame between this one and the producer's
        # (docs/benchmarks.md, memory).
        items, encode, item = producer.items, producer.encode, core.item
        run_in = stream.run_in()
        try:
            while True:
                if not self._flushing and core.state is PENDING:
                    # Runs only if the producer waits: then what it made goes out.
                    self._flushing = True
                    stream.hub.loop.run_callback(self._flush)
                stream.parked = True
                frame = run_in(encode, run_in(next, items))
                stream.parked = False
                if item(frame):
                    self._yield = True  # full: the handler writes it
                    return
                if core.reason is not None:
                    return
        except Interrupted:
            pass  # stopped: whoever stopped it set the reason
        except BaseException as error:
            stream.parked = False
            # Raises what is not the producer's end.
            run_in(producer.settle, error)
        stream.parked = False
        run_in(producer.close)
        self._producer = None
        self._done = True

    def _make_producer(self) -> Producer:
        return Producer(self._stream)

    def _flush(self) -> None:
        self._flushing = False
        self._stream.flush_beside()

    def wake(self) -> None:
        # The handler is in the producer, or about to ask for its turn.
        pass

    def taken(self) -> None:
        pass

    def stop(self) -> None:
        if self._stream.parked and self._producer is not None and not self._interrupting:
            self._interrupting = True
            self._stream.hub.loop.run_callback(self._interrupt)

    def _interrupt(self) -> None:
        # In the hub; the handler may have come out of the producer since.
        if self._stream.parked and self._producer is not None:
            self._transport.interrupt()

    def close(self) -> None:
        producer, self._producer = self._producer, None
        self._done = True
        if producer is not None:
            self._stream.run(producer.close)  # the handler was not in it: the cleanup runs here
