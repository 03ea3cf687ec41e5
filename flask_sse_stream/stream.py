"""The response body of one event stream.

:class:`EventStream` is the WSGI iterable a stream view returns. The
server's *handler* greenlet iterates it; the view's generator, the
*producer*, runs one of two ways:

* in the handler greenlet itself, where the server lets the stream write
  beside it (:mod:`flask_sse_stream.direct`: our runner, gunicorn's gevent
  workers). Items are collected into one chunk while the producer makes
  them without waiting; when it waits, what it made is written at once from
  the hub, and heartbeats are written by the heartbeat loop. To stop a
  producer blocked in the middle of its work, an exception is thrown into
  the handler greenlet where it waits;
* otherwise in a greenlet of its own, which appends the encoded items to a
  bounded buffer, waiting when it is full (a slow client back-pressures the
  producer, memory stays bounded). Each ``next()`` of the handler takes
  everything buffered: events queued faster than the socket drains are
  coalesced into one chunk. To stop the producer, its greenlet is killed.

Either way a chunk only ever holds whole events. A broker subscription
needs no producer at all: the handler takes its events itself (the
subscription's queue is the buffer), and where the server allows it, the
broker's fan-out writes new events beside the server from the hub.

The first ``next()`` returns the preamble (a ``retry:`` field or a comment)
without waiting for the producer: gevent's pywsgi and gunicorn send the
response headers with the first non-empty chunk, so the client sees the
response open at once even when the producer blocks for minutes.

The stream ends, and the producer is killed wherever it is blocked (its
``finally`` clauses run), when the client goes away (seen by
:mod:`flask_sse_stream.cancel` or by a failed write), when a write takes
longer than the write timeout, when the server drains, or when the
producer finishes or raises. A producer's exception is logged with its
traceback; the client only sees the stream end.
"""

from __future__ import annotations

import enum
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import gevent
from gevent._hub_local import get_hub_if_exists
from gevent.hub import Hub, Waiter

from . import heartbeat as _heartbeat
from .cancel import SocketWatch, peer_closed
from .direct import DirectWriter, chunk, writer_for
from .event import Event

__all__ = ["HEARTBEAT", "CloseReason", "EventStream", "drain", "heartbeats", "open_streams"]

HEARTBEAT = b":\n"
"""The comment sent on an idle stream."""

_HEARTBEAT_CHUNK = chunk(HEARTBEAT)

heartbeats: Counter[str] = Counter()
"""Heartbeats sent by this process's streams: ``"direct"``, by the heartbeat
loop beside the server, and ``"handler"``, through the server."""


class CloseReason(enum.Enum):
    """Why a stream ended."""

    FINISHED = "finished"
    """The producer returned."""
    ERROR = "error"
    """The producer raised; the exception was logged."""
    DISCONNECT = "disconnect"
    """The client closed the connection."""
    WRITE_FAILED = "write-failed"
    """A write to the client failed or timed out."""
    DRAIN = "drain"
    """The server is shutting down and asked the client to reconnect."""


class _Cancelled(gevent.GreenletExit):
    """Thrown into the handler greenlet, where it runs the producer, to stop it."""


class _State(enum.Enum):
    NEW = 0
    OPEN = 1
    ENDING = 2  # the last chunk has been returned
    CLOSED = 3


_open: set[EventStream] = set()


def open_streams() -> frozenset[EventStream]:
    """Return the streams of this process that are being served right now."""
    return frozenset(_open)


def drain(retry: int = 1000, jitter: float = 1.0) -> int:
    """Ask every open stream of the calling thread's hub to end after a last ``retry:`` field.

    Each stream's clients are told to reconnect after ``retry`` milliseconds
    plus a random share of ``retry * jitter``, so they come back spread out
    instead of all at once. Returns how many streams were asked.
    """
    hub = gevent.get_hub()
    streams = [stream for stream in open_streams() if stream._hub is hub]
    for stream in streams:
        delay = retry + int(random.random() * retry * jitter)
        stream.end(Event(None, retry=delay).encode())
    return len(streams)


OnClose = Callable[[CloseReason], None]


def _is_subscription(source: object) -> bool:
    """Whether ``source`` is a broker subscription the handler can serve itself."""
    return all(
        callable(getattr(source, name, None)) for name in ("get_batch", "wait", "interrupt")
    ) and hasattr(source, "closed")


class EventStream:
    """The WSGI response iterable of one stream; built by :meth:`SSE.stream`.

    :param source: the producer: any iterable, usually the view's generator.
    :param encode: turns one item of ``source`` into bytes; raises
        ``TypeError`` or :class:`~flask_sse_stream.InvalidEventError` for an
        item it cannot send.
    :param preamble: the first bytes, sent at once; never empty.
    :param heartbeat: seconds of silence before a heartbeat comment, or
        ``None`` for no heartbeat.
    :param sock: the client socket to watch and time writes on, if known.
    :param write_timeout: seconds one write may block before the client is
        dropped; needs ``sock``.
    :param buffer_size: how many encoded items may wait for the socket.
    :param context: entered where the producer runs, around the whole
        iteration, to give it the Flask application and request contexts.
    :param on_close: called once, inside ``context``, with the reason the
        stream ended.
    :param logger: where a producer's exception is logged.
    """

    __slots__ = (
        "__weakref__",
        "_beat_due",
        "_buffer_size",
        "_context",
        "_direct",
        "_encode",
        "_end_frame",
        "_flushing",
        "_frames",
        "_handler",
        "_heartbeat",
        "_hub",
        "_logger",
        "_old_timeout",
        "_on_close",
        "_out",
        "_own_hub",
        "_parked",
        "_preamble",
        "_producer",
        "_ran",
        "_raw_rest",
        "_readable",
        "_reason",
        "_released",
        "_room",
        "_runner",
        "_sock",
        "_source",
        "_state",
        "_waiter",
        "_watch",
        "_write_timeout",
        "_writer",
        "_yield_due",
        "last_write",
    )

    def __init__(
        self,
        source: Iterable[Any],
        *,
        encode: Callable[[Any], bytes],
        preamble: bytes,
        heartbeat: float | None = None,
        sock: socket.socket | None = None,
        write_timeout: float | None = None,
        buffer_size: int = 64,
        context: Callable[[], AbstractContextManager[Any]] = nullcontext,
        on_close: OnClose | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if not preamble:
            raise ValueError("the preamble must not be empty: it is what sends the headers")
        # A server that runs each request in its own thread (werkzeug's
        # development server) gets a new gevent hub, with its own event loop
        # and file descriptors, for every stream; the stream that made the
        # hub destroys it when it closes, or every request would leak one.
        self._own_hub = (
            get_hub_if_exists() is None
            and threading.current_thread() is not threading.main_thread()
        )
        self._hub: Hub = gevent.get_hub()
        self._source = source
        self._encode = encode
        self._preamble = preamble
        self._heartbeat = heartbeat or None
        self._sock = sock
        self._write_timeout = write_timeout
        self._buffer_size = buffer_size
        # The buffer, and the waiters of the handler (for frames) and of the
        # producer (for room); a list and two Waiters rather than a gevent
        # Queue, which costs ~2 KiB per idle stream.
        self._frames: list[bytes] = []
        self._waiter: Waiter[Any] | None = None
        self._room: Waiter[Any] | None = None
        self._direct = _is_subscription(source)
        self._beat_due = False
        self._parked = False
        self._out = 0
        self._writer: DirectWriter | None = None
        self._raw_rest: tuple[Any, bytes] | None = None
        self._released = False
        self._context = context
        self._on_close = on_close
        self._logger = logger or logging.getLogger("flask_sse_stream")
        self._state = _State.NEW
        self._reason: CloseReason | None = None
        self._readable = False
        self._ran = False
        self._end_frame = b""
        self._producer: gevent.Greenlet[[], None] | None = None
        self._runner: Generator[bytes, None, None] | None = None
        self._handler: Any = None
        self._flushing = False
        self._yield_due = False
        self._watch: SocketWatch | None = None
        self._old_timeout: float | None = None
        self.last_write = 0.0

    def attach(self, start_response: Callable[..., Any]) -> None:
        """Tell the stream the ``start_response`` its server called the app with.

        Where that is a known server's own, a waiting stream's heartbeats,
        new events and a generator's items are written without waking the
        server's handler, and a generator view runs in that handler (see
        :mod:`flask_sse_stream.direct`).
        """
        self._writer = writer_for(start_response)

    # The handler greenlet's side: the WSGI iterable.

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._state is _State.OPEN:
            return self._next_chunk()
        if self._state is _State.NEW:
            return self._start()
        self._state = _State.CLOSED
        raise StopIteration

    def _start(self) -> bytes:
        self._state = _State.OPEN
        _open.add(self)
        sock = self._sock
        if sock is not None:
            if self._write_timeout:
                self._old_timeout = sock.gettimeout()
                # gevent's sendall honours the timeout for the whole call.
                sock.settimeout(self._write_timeout)
            try:
                self._watch = SocketWatch(sock, self._on_readable)
            except (OSError, ValueError):
                self._watch = None  # not watchable here: failed writes tell
        if not self._direct and self._writer is None:
            self._producer = gevent.spawn(self._produce)
        elif self._direct and self._writer is not None:
            set_sink = getattr(self._source, "set_sink", None)
            if set_sink is not None:
                set_sink(self._deliver)
        if self._heartbeat:
            _heartbeat.for_current_hub().add(self, self._heartbeat)
        self.last_write = time.monotonic()
        self._out = len(self._preamble)
        return self._preamble

    def _next_chunk(self) -> bytes:
        if self._direct:
            return self._next_events()
        if self._runner is not None:
            return self._next_inline()
        if self._producer is None and self._reason is None:
            self._begin()
            if self._runner is not None:
                return self._next_inline()
        return self._next_buffered()

    def _begin(self) -> None:
        """Start the producer: in this greenlet if the server lets us write beside it."""
        # Asked once the preamble went out: before, the server has neither
        # sent its headers nor chosen its framing. (Without a writer, the
        # producer greenlet started with the preamble.)
        writer = self._writer
        if writer is not None and writer.socket_for(self, self._out) is not None:
            self._handler = gevent.getcurrent()
            self._runner = self._run()
        else:
            self._producer = gevent.spawn(self._produce)

    def _next_inline(self) -> bytes:
        """The next chunk, made by running the producer in the handler greenlet."""
        runner = self._runner
        assert runner is not None
        if self._yield_due:
            # The last chunk was full: the producer never waits, so let the
            # other greenlets have a turn, as a full buffer would.
            self._yield_due = False
            gevent.sleep(0)
        while True:
            self._check_flags()
            frames = self._frames
            if self._reason is not None:
                self._frames = []
                return self._last_chunk(b"".join(frames))
            if len(frames) >= self._buffer_size:
                self._frames = []
                self._yield_due = True
                return self._written(b"".join(frames))
            if not frames and self._beat_due:
                return self._beat_through_server()
            if frames and not self._flushing:
                # Runs only if the producer waits: then it sends what is made.
                self._flushing = True
                self._hub.loop.run_callback(self._flush)
            self._parked = True
            try:
                frame = next(runner)
            except (StopIteration, _Cancelled):
                continue  # the reason is set
            finally:
                self._parked = False
            self._frames.append(frame)

    def _next_buffered(self) -> bytes:
        """The next chunk, taken from what the producer greenlet buffered."""
        while True:
            self._check_flags()
            frames = self._frames
            if frames:
                self._frames = []
                room = self._room
                if room is not None:
                    self._room = None
                    self._hub.loop.run_callback(room.switch, None)
            if self._reason is not None:
                return self._last_chunk(b"".join(frames))
            if frames:
                return self._written(b"".join(frames))
            if self._beat_due:
                return self._beat_through_server()
            waiter = self._waiter = Waiter(self._hub)
            self._park(waiter.get)

    def _next_events(self) -> bytes:
        """The next chunk of a subscription, taken by the handler itself."""
        sub: Any = self._source
        encode = self._encode
        while True:
            self._check_flags()
            if self._reason is not None:
                return self._last_chunk(b"")
            events = sub.get_batch(self._buffer_size)
            if events:
                return self._written(b"".join([encode(event) for event in events]))
            if sub.closed:
                self._reason = CloseReason.FINISHED
                return self._last_chunk(b"")
            if self._beat_due:
                return self._beat_through_server()
            self._park(sub.wait)

    def _park(self, wait: Callable[[], object]) -> None:
        # While parked, the server has written everything the stream gave
        # it and writes nothing: the window in which beat() may write itself.
        self._parked = True
        try:
            wait()
        finally:
            self._parked = False
            self._waiter = None

    def _check_flags(self) -> None:
        """Act on what happened while the handler was away (called first on each turn)."""
        if self._raw_rest is not None:
            self._send_raw_rest()
        self._check_readable()

    def _check_readable(self) -> None:
        if self._readable and self._reason is None:
            # The watch fired: the client closed, or (rarely) sent bytes.
            self._readable = False
            if self._sock is not None and peer_closed(self._sock):
                self._reason = CloseReason.DISCONNECT

    def _send_raw_rest(self) -> None:
        """Finish a chunk that was sent beside the server only in part."""
        assert self._raw_rest is not None
        sock, rest = self._raw_rest
        self._raw_rest = None
        try:
            sock.sendall(rest)
        except OSError:
            gone = peer_closed(sock)
            # Part of a chunk is on the wire: nothing may follow on this
            # connection, not even the server's last chunk.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            if self._reason is None or self._reason is CloseReason.DRAIN:
                self._reason = CloseReason.DISCONNECT if gone else CloseReason.WRITE_FAILED
            self._last_chunk(b"")  # raises StopIteration

    def _beat_through_server(self) -> bytes:
        """Return a heartbeat for the server to write."""
        heartbeats["handler"] += 1
        return self._written(HEARTBEAT)

    def _written(self, data: bytes) -> bytes:
        """Return ``data`` for the server to write, and note that it did."""
        self._beat_due = False
        self._out += len(data)
        self.last_write = time.monotonic()
        return data

    def _last_chunk(self, pending: bytes) -> bytes:
        """Return what is left to write once the stream has a reason to end."""
        if self._reason is CloseReason.DISCONNECT or self._reason is CloseReason.WRITE_FAILED:
            self._state = _State.CLOSED
            self._stop_producer()
            raise StopIteration
        # FINISHED, ERROR or DRAIN: everything the producer made is in
        # ``pending`` (it sets the reason after its last put).
        last = pending + self._end_frame
        if last:
            self._state = _State.ENDING
            return last
        self._state = _State.CLOSED
        raise StopIteration

    # Called from elsewhere: the hub, the heartbeat loop, a drain.

    def _on_readable(self) -> None:
        self._readable = True
        self._wake()

    def _wake(self) -> None:
        """Make the handler take its next turn (a no-op while it is busy writing)."""
        if self._direct:
            self._source.interrupt()  # type: ignore[attr-defined]
            return
        if self._runner is not None:
            self._wake_inline()
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            # Waiter.switch must run in the hub.
            self._hub.loop.run_callback(waiter.switch, None)

    def _wake_inline(self) -> None:
        if self._parked and (self._reason is not None or self._readable):
            self._hub.loop.run_callback(self._cancel_inline)

    def _cancel_inline(self) -> None:
        # In the hub: the handler is parked, if at all, in the producer.
        self._check_readable()
        # Only for a reason from outside, and once: a producer that has
        # finished by itself may be in its cleanup, which must run whole.
        stopped = self._reason is CloseReason.DISCONNECT or self._reason is CloseReason.DRAIN
        if stopped and self._parked and self._handler is not None:
            handler, self._handler = self._handler, None
            handler.throw(_Cancelled)

    def _beside(self) -> Any:
        """The socket to write on beside the server right now, or ``None``."""
        if not self._parked or self._raw_rest is not None or self._reason is not None:
            return None
        writer = self._writer
        return None if writer is None else writer.socket_for(self, self._out)

    def _send_beside(self, sock: Any, frame: bytes) -> bool:
        """Send ``frame`` beside the server; the handler sends what does not fit.

        Returns ``True`` if all of it went.
        """
        try:
            sent = DirectWriter.send(sock, frame)
        except OSError:
            sent = 0  # the handler's write fails too, and ends the stream
        if sent:
            self.last_write = time.monotonic()
        if sent < len(frame):
            self._raw_rest = (sock, frame[sent:])
            return False
        return True

    def beat(self) -> None:
        """Send a heartbeat comment, or have the handler send it; never blocks."""
        sock = self._beside()
        if sock is None:
            self._beat_due = True
        elif self._send_beside(sock, _HEARTBEAT_CHUNK):
            heartbeats["direct"] += 1
            return
        self._wake()

    def _flush(self) -> None:
        """Send what the producer made before it began to wait; runs in the hub."""
        self._flushing = False
        frames = self._frames
        if frames:
            sock = self._beside()
            if sock is not None:
                self._frames = []
                self._send_beside(sock, chunk(b"".join(frames)))

    def _deliver(self) -> bool:
        """Send a subscription's queued events beside the server; runs in the hub.

        Returns ``False`` when the handler must take its turn instead:
        something else woke it, no direct write is possible, or the socket
        did not take the whole chunk (the handler sends the rest first).
        """
        if self._readable or self._beat_due:
            return False
        sock = self._beside()
        if sock is None:
            return False
        events = self._source.get_batch(self._buffer_size)  # type: ignore[attr-defined]
        if not events:
            return False
        try:
            frame = chunk(b"".join([self._encode(event) for event in events]))
        except Exception:
            self._logger.exception("Exception in event stream; ending the stream")
            self._reason = CloseReason.ERROR
            return False
        return self._send_beside(sock, frame)

    def end(self, last: bytes = b"") -> None:
        """End the stream after what is buffered and ``last``; kill the producer."""
        if self._reason is None and self._state is _State.OPEN:
            self._reason = CloseReason.DRAIN
            self._end_frame = last
            self._stop_producer()
            self._wake()

    # The producer.

    def _run(self) -> Generator[bytes, None, None]:
        """The source's items encoded, inside the view's contexts; then the cleanup."""
        self._ran = True
        try:
            with self._context():
                try:
                    encode = self._encode
                    for item in self._source:
                        yield encode(item)
                except gevent.GreenletExit:
                    raise  # stopped: whoever stopped it has set the reason
                except Exception:
                    self._logger.exception("Exception in event stream; ending the stream")
                    self._set_reason(CloseReason.ERROR)
                else:
                    self._set_reason(CloseReason.FINISHED)
                finally:
                    self._close_source()
                    self._call_on_close()
        except Exception:
            self._logger.exception("Exception while closing an event stream")
            self._set_reason(CloseReason.ERROR)

    def _produce(self) -> None:
        """The producer greenlet's body."""
        runner = self._run()
        try:
            for frame in runner:
                self._put(frame)
        except gevent.GreenletExit:
            return  # killed: whoever killed it has set the reason
        finally:
            runner.close()  # killed while waiting for room: the cleanup runs here
        self._wake()  # after the last frame: the handler ends

    def _put(self, frame: bytes) -> None:
        while len(self._frames) >= self._buffer_size:
            room = self._room = Waiter(self._hub)
            room.get()  # the handler switches here once it has taken the frames
        self._frames.append(frame)
        self._wake()

    def _set_reason(self, reason: CloseReason) -> None:
        if self._reason is None:
            self._reason = reason

    def _call_on_close(self) -> None:
        if self._on_close is not None:
            self._on_close(self._reason or CloseReason.DISCONNECT)

    def _close_source(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def _stop_producer(self) -> None:
        producer = self._producer
        if producer is not None and producer is not gevent.getcurrent():
            producer.kill(block=False)

    # The end: the server calls close() on the iterable, whatever happened.

    def close(self) -> None:
        """Release everything; the server calls this when the response ends."""
        if self._state is _State.NEW:
            self._state = _State.CLOSED
            try:
                self._close_source()  # never started, e.g. a HEAD request
            finally:
                self._release_hub()
            return
        if self._released:
            return  # closed already
        self._released = True
        self._state = _State.CLOSED
        sock = self._sock
        if self._reason is None:
            # Neither producer nor stream ended it: the server gave up on a
            # write (broken pipe, timeout) or was stopped.
            gone = sock is not None and peer_closed(sock)
            self._reason = CloseReason.DISCONNECT if gone else CloseReason.WRITE_FAILED
        _open.discard(self)
        if self._heartbeat:
            _heartbeat.for_current_hub().discard(self, self._heartbeat)
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if sock is not None and self._write_timeout:
            try:
                sock.settimeout(self._old_timeout)
            except OSError:
                pass
        if sock is not None and self._reason is CloseReason.DRAIN:
            # The server is stopping: make it close this connection after the
            # response, or the browser reconnects on the same kept-alive
            # connection and gets a new stream from this stopping process
            # (gunicorn keeps serving its open connections). With the read
            # side shut, the server's wait for the next request ends at once.
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        producer, self._producer = self._producer, None
        runner, self._runner = self._runner, None
        try:
            if producer is not None:
                producer.kill(block=True, timeout=5)
            if runner is not None:
                runner.close()  # the handler was not in it: the cleanup runs here
            if not self._ran:
                # No producer ran (a subscription, or the client left before
                # it started): its cleanup is still owed.
                self._cleanup_unstarted()
        finally:
            self._release_hub()

    def _cleanup_unstarted(self) -> None:
        try:
            with self._context():
                try:
                    self._close_source()
                finally:
                    self._call_on_close()
        except Exception:
            self._logger.exception("Exception while closing an event stream")

    def _release_hub(self) -> None:
        hub = self._hub
        if not self._own_hub or get_hub_if_exists() is not hub:
            return
        if any(stream._hub is hub for stream in open_streams()):
            return
        self._own_hub = False
        _heartbeat.for_current_hub().stop()
        gevent.sleep(0)  # let pending kills (a heartbeat loop's) run first
        hub.destroy(destroy_loop=True)
