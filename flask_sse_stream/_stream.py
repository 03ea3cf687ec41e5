"""The response body of one event stream.

:class:`EventStream` is the WSGI iterable a stream view returns. The server's
*handler* greenlet iterates it. What to write and when is decided by the
stream's state machine (:mod:`flask_sse_stream._core`); this module feeds it
and carries out what it says, with greenlets and sockets.

The items come from a *feed* (:mod:`flask_sse_stream._feeds`), one of:

* a broker subscription, which the handler serves itself (no producer);
* the view's generator in a greenlet of its own, the plain path that works
  on every WSGI server;
* the view's generator run by the handler greenlet itself, where one of our
  own handlers serves the request (:mod:`flask_sse_stream._transport`).

The first ``next()`` returns the preamble (a ``retry:`` field or a comment)
without waiting for the producer: gevent's pywsgi and gunicorn send the
response headers with the first non-empty chunk, so the client sees the
response open at once even when the producer blocks for minutes.

Where the request came through one of our handlers, and only there, the
stream also writes *beside the server*: while the handler waits inside the
stream, heartbeats, new events of a subscription and what a generator made
before it waits go straight to the socket, and a frame that went out only in
part is finished before anything else.

The stream ends, and the producer is stopped wherever it is blocked (its
``finally`` clauses run), when the client goes away (seen by
:mod:`flask_sse_stream._cancel` or by a failed write), when a write takes
longer than the write timeout, when the server drains, or when the producer
finishes or raises. A producer's exception is logged with its traceback; the
client only sees the stream end.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeGuard, TypeVar

import gevent

from . import _heartbeat
from ._broker import Subscription
from ._cancel import SocketWatch, peer_closed
from ._compress import Compressor
from ._core import (
    CLOSED,
    HEARTBEAT,
    IDLE,
    NEW,
    PENDING,
    RAW,
    WAIT,
    WRITE,
    CloseReason,
    StreamCore,
)
from ._event import Event
from ._feeds import Feed, GreenletFeed, InlineFeed, SubscriptionFeed
from ._transport import Transport

__all__ = [
    "HEARTBEAT",
    "CloseReason",
    "EventStream",
    "admitted_streams",
    "drain",
    "heartbeats",
    "open_streams",
]

heartbeats: Counter[str] = Counter()
"""Heartbeats sent by this process's streams: ``"direct"``, by the heartbeat
loop beside the server, and ``"handler"``, through the server."""

_open: set[EventStream] = set()
# Streams made and not started yet: with the open ones, what a connection
# limit counts, so a burst of requests cannot all pass the check before the
# first of them starts. Weak: a response that is never served nor closed
# drops out. A stream leaves it when it starts (a weak reference less for
# every open stream).
_admitted: weakref.WeakSet[EventStream] = weakref.WeakSet()


_subscription_types: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _is_subscription(source: object) -> TypeGuard[Subscription]:
    """``isinstance(source, Subscription)``, answered once per type.

    Instances of one class answer alike unless they differ in which of the
    protocol's members they have, which a subscription class does not do.
    """
    # An isinstance() against a runtime-checkable Protocol looks up each of
    # its members on the object: ~40 us, a tenth of a stream's opening (S1).
    kind = type(source)
    known = _subscription_types.get(kind)
    if known is None:
        known = _subscription_types[kind] = isinstance(source, Subscription)
    return known


OnClose = Callable[[CloseReason], None]

# After these the connection carries no next request: what the client sent
# meanwhile (a stray CRLF) is not one.
_NO_NEXT_REQUEST = frozenset({CloseReason.DISCONNECT, CloseReason.WRITE_FAILED, CloseReason.DRAIN})
T = TypeVar("T")


class StreamContext(Protocol):
    """Where a stream's producer runs: the view's contexts (see ``extension.py``)."""

    def run(self, func: Callable[[], T]) -> T:
        """Call ``func()`` in the context; in one greenlet at a time."""

    def run_in(self) -> Callable[..., Any]:
        """Enter the context now; return ``run(func, *args)``, calling ``func(*args)`` in it.

        The ``run`` returned calls from C (``contextvars.Context.run``): no
        interpreter frame of its own between its caller and ``func``.
        """

    def end(self, error: BaseException | None) -> None:
        """Leave the context for good (``error``: what ended the producer, if not its end)."""


def _call(func: Callable[..., T], *args: Any) -> T:
    return func(*args)


def open_streams() -> frozenset[EventStream]:
    """Return the streams of this process that are being served right now."""
    return frozenset(_open)


def admitted_streams() -> int:
    """How many streams of this process were made and are not closed yet.

    Counts a stream from the moment its response is made, before the
    server starts it.
    """
    return len(_admitted) + len(_open)


def drain(retry: int = 1000, jitter: float = 1.0) -> int:
    """Ask every open stream of the calling thread's hub to end after a last ``retry:`` field.

    Each stream's clients are told to reconnect after ``retry`` milliseconds
    plus a random share of ``retry * jitter``, so they come back spread out
    instead of all at once. Returns how many streams were asked.
    """
    hub = gevent.get_hub()
    streams = [stream for stream in open_streams() if stream.hub is hub]
    for stream in streams:
        delay = retry + int(random.random() * retry * jitter)
        stream.end(Event(None, retry=delay).encode())
    return len(streams)


class EventStream:
    """The WSGI response iterable of one stream; built by :meth:`SSE.stream`.

    :param source: the producer: any iterable, usually the view's generator,
        or a broker :class:`~flask_sse_stream.Subscription`.
    :param encode: turns one item of ``source`` into bytes; raises
        ``TypeError`` or :class:`~flask_sse_stream.InvalidEventError` for an
        item it cannot send.
    :param preamble: the first bytes, sent at once; never empty.
    :param heartbeat: seconds of silence before a heartbeat comment, or
        ``None`` for no heartbeat.
    :param sock: the client socket to watch for a disconnect, if known.
    :param transport: the request's :class:`~flask_sse_stream._transport.Transport`,
        where one of our handlers serves it: writes beside the server.
    :param write_timeout: seconds a write may take before the client is
        dropped (its socket is shut down, which ends the server's write).
    :param buffer_size: how many encoded items may wait for the socket.
    :param context: where the producer, and its cleanup, runs: the view's
        contexts.
    :param on_close: called once, in those contexts, with the reason the
        stream ended.
    :param logger: where a producer's exception is logged.
    :param compressor: compresses the stream, flushed chunk by chunk
        (:mod:`flask_sse_stream._compress`); the response must say its
        ``Content-Encoding``.
    """

    __slots__ = (
        "__weakref__",
        "_clock",
        "_context",
        "_core",
        "_encode",
        "_error",
        "_feed",
        "_logger",
        "_on_close",
        "_out",
        "_own_hub",
        "_preamble",
        "_ran",
        "_readable",
        "_released",
        "_rest_writer",
        "_sock",
        "_source",
        "_transport",
        "_watch",
        "beat_after",
        "hub",
        "last_write",
        "parked",
        "write_timeout",
        "writing_since",
    )

    def __init__(
        self,
        source: Iterable[Any],
        *,
        encode: Callable[[Any], bytes],
        preamble: bytes,
        heartbeat: float | None = None,
        sock: socket.socket | None = None,
        transport: Transport | None = None,
        write_timeout: float | None = None,
        buffer_size: int = 64,
        context: StreamContext | None = None,
        on_close: OnClose | None = None,
        logger: logging.Logger | None = None,
        compressor: Compressor | None = None,
    ) -> None:
        if not preamble:
            raise ValueError("the preamble must not be empty: it is what sends the headers")
        # A server that runs each request in a thread of its own, outside
        # any gevent loop (werkzeug's development server: the view runs in
        # the thread's main greenlet, which has no parent), gets a gevent
        # hub, with its own event loop and file descriptors, per stream. The
        # thread ends with the request, so the stream's last close destroys
        # the hub, or each would leak.
        # (The parent first: in a patched process current_thread() makes
        # and keeps a dummy thread object per greenlet.)
        self._own_hub = (
            gevent.getcurrent().parent is None
            and threading.current_thread() is not threading.main_thread()
        )
        self.hub = gevent.get_hub()
        self._core = StreamCore(buffer_size, compressor)
        self._source = source
        self._encode = encode
        self._preamble = preamble
        self.beat_after = heartbeat * 2 / 3 if heartbeat else None
        """Seconds of silence before a heartbeat (the heartbeat loop checks a third
        of the interval apart, so no stream is silent for the whole interval)."""
        self._sock = sock if sock is not None or transport is None else transport.socket
        self._transport = transport
        self.write_timeout = write_timeout or None
        self._clock = _heartbeat.interval_for(heartbeat, self.write_timeout)
        self._context = context
        self._on_close = on_close
        self._logger = logger or logging.getLogger("flask_sse_stream")
        self._feed: Feed | None = None
        self._error: Exception | None = None
        self._rest_writer: gevent.Greenlet[[], None] | None = None
        self._watch: SocketWatch | None = None
        self._out = 0
        self._ran = False
        self._readable = False
        self._released = False
        self.parked = False
        """Whether the handler waits inside the stream (and so writes nothing)."""
        self.last_write = 0.0
        self.writing_since = 0.0
        """When the server was handed the chunk it is writing now, or 0."""
        _admitted.add(self)

    @property
    def core(self) -> StreamCore:
        """The stream's state machine."""
        return self._core

    @property
    def encode(self) -> Callable[[Any], bytes]:
        """How the stream turns an item into bytes."""
        return self._encode

    @property
    def logger(self) -> logging.Logger:
        """Where the stream logs a producer's exception."""
        return self._logger

    # The handler greenlet's side: the WSGI iterable.

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        core = self._core
        if core.state is NEW:
            return self._start()
        self.writing_since = 0.0
        feed = self._feed
        if feed is None:
            if self._released:
                raise StopIteration  # closed: its feed is gone
            feed = self._feed = self._choose_feed()
        while True:
            writer = self._rest_writer
            if writer is not None:
                writer.join()  # it finishes a frame on the socket: nothing may overtake it
            if self._readable:
                self._check_peer()
            if core.state is PENDING and self._write_here():
                continue
            # A turn in IDLE with a heartbeat owed writes the heartbeat
            # (compressed, it is no longer HEARTBEAT's bytes).
            beat = core.beat_due and core.state is IDLE
            turn = core.handler_turn()
            kind = turn.kind
            if kind is WRITE:
                feed.taken()
                data = turn.data
                if beat:
                    heartbeats["handler"] += 1
                self._out += len(data)
                self.last_write = self.writing_since = time.monotonic()
                return data
            if kind is WAIT:
                feed.wait()
            elif kind is RAW:
                self._send_rest()
            else:
                raise StopIteration

    def _start(self) -> bytes:
        _admitted.discard(self)
        _open.add(self)
        sock = self._sock
        if sock is not None:
            try:
                self._watch = SocketWatch(sock, self._on_readable)
            except (OSError, ValueError):
                self._watch = None  # not watchable here: failed writes tell
        source = self._source
        if _is_subscription(source):
            self._feed = SubscriptionFeed(self, source, beside=self._transport is not None)
        elif self._transport is None:
            self._feed = GreenletFeed(self)
        # else: chosen on the next turn, once the server has sent the preamble.
        if self._clock is not None:
            _heartbeat.for_current_hub().add(self, self._clock)
        first = self._core.start(self._preamble)
        self._out = len(first)
        self.last_write = self.writing_since = time.monotonic()
        return first

    def _choose_feed(self) -> Feed:
        # The producer may run in the handler greenlet only where our
        # transport can write what it makes while it waits.
        transport = self._transport
        if transport is not None and transport.can_send(self._out):
            return InlineFeed(self, transport)
        return GreenletFeed(self)

    def _check_peer(self) -> None:
        # The watch fired: the client closed, or (rarely) sent bytes.
        self._readable = False
        if self._sock is not None and peer_closed(self._sock):
            self._stop_if(self._core.peer_closed())

    def _send_rest(self) -> None:
        """Send the rest of a frame that went beside the server in part."""
        assert self._transport is not None
        self.writing_since = time.monotonic()  # the watchdog looks at this write too
        try:
            self._transport.send_all(self._core.rest)
        except OSError:
            self._write_failed()
        else:
            self._core.raw_sent()
            self.last_write = time.monotonic()
        finally:
            self.writing_since = 0.0

    def _write_failed(self) -> None:
        gone = self._sock is not None and peer_closed(self._sock)
        core = self._core
        self._stop_if(core.peer_closed() if gone else core.write_failed())
        # Part of a chunk may be on the wire: nothing may follow on this
        # connection, not even the server's last chunk.
        self._shutdown(socket.SHUT_RDWR)

    # Called from elsewhere: the hub, the heartbeat loop, a drain, a feed.

    def run(self, func: Callable[[], T]) -> T:
        """Call ``func()`` where the producer runs (the view's contexts)."""
        context = self._context
        return func() if context is None else context.run(func)

    def run_in(self) -> Callable[..., Any]:
        """Return ``run(func, *args)``: ``func(*args)`` where the producer runs.

        Where the stream has contexts, ``run`` is their ``Context.run``, a C
        call: a producer that waits inside it keeps one interpreter frame
        less on the handler's C stack than one called from :meth:`run`.
        """
        context = self._context
        return _call if context is None else context.run_in()

    def begin_producing(self) -> Iterator[Any]:
        """The source's iterator; call inside :meth:`run`."""
        self._ran = True
        return iter(self._source)

    def producer_failed(self, error: Exception) -> None:
        """The producer (or the encoding of what it made) raised ``error``: end the stream."""
        self._logger.exception("Exception in event stream; ending the stream", exc_info=error)
        self._error = error
        self._core.failed()

    def end_producing(self, items: Iterator[Any]) -> None:
        """The producer's cleanup, once: close it (its ``finally`` runs), ``on_close``.

        Call inside :meth:`run`, with what :meth:`begin_producing` returned.
        """
        try:
            try:
                close = getattr(items, "close", None)
                if close is not None:
                    close()  # a no-op for a generator that has ended
                self._close_source()
            finally:
                self._call_on_close()
        except Exception:
            self._logger.exception("Exception while closing an event stream")
            self._core.failed()

    def wake(self) -> None:
        """Make the handler take its next turn (a no-op while it is busy writing)."""
        feed = self._feed
        if feed is not None:
            feed.wake()

    def _on_readable(self) -> None:
        self._readable = True
        feed = self._feed
        if isinstance(feed, InlineFeed):
            self._check_peer()  # the handler may be deep in the producer
        else:
            self.wake()

    def _stop_if(self, stop: bool) -> None:
        if stop and self._feed is not None:
            self._feed.stop()
        self.wake()

    def end(self, last: bytes = b"") -> None:
        """End the stream after what is made and ``last``; stop the producer."""
        if self._core.state is not NEW:
            self._stop_if(self._core.drain(last))

    def beat(self) -> None:
        """Send a heartbeat comment, or have the handler send it; never blocks."""
        if self._core.heartbeat_due():
            if self.flush_beside():
                heartbeats["direct"] += 1
            else:
                self.wake()

    def write_timed_out(self) -> None:
        """A write has taken longer than the write timeout: drop the client."""
        self._logger.warning("flask-sse-stream: dropped a client: a write took too long")
        self._stop_if(self._core.write_failed())
        # The server waits in its write; a shut socket ends that wait.
        self._shutdown(socket.SHUT_RDWR)

    def flush_beside(self) -> bool:
        """Write what is owed beside the server, if it may be now; runs in the hub.

        Returns ``True`` if something was written (in full, or in part with
        the rest on its way).
        """
        transport = self._transport
        if (
            transport is None
            or not self.parked
            or self._rest_writer is not None
            or not transport.can_send(self._out)
        ):
            return False
        frame = self._core.take_beside()
        if frame is None:
            return False
        if self._send_beside(transport, frame):
            self._rest_owed()
        return True

    def _write_here(self) -> bool:
        """Handler: write the pending frames beside the server, if it may; ``True`` if so.

        Cheaper than handing them to the server, which copies each chunk
        into its framing and asks the kernel for the socket's buffer size
        on every write (docs/benchmarks.md, S3). A rest that did not fit is
        written here too: the handler may wait for its own connection.
        """
        transport = self._transport
        if transport is None or not transport.can_send(self._out):
            return False
        frame = self._core.take_beside()
        if frame is None:
            return False
        assert self._feed is not None
        self._feed.taken()
        if self._send_beside(transport, frame):
            self._send_rest()
        return True

    def _send_beside(self, transport: Transport, frame: bytes) -> bool:
        """Send what fits of ``frame`` now; ``True`` if the rest is owed."""
        try:
            sent = transport.send(frame)
        except OSError:
            sent = 0  # the rest's write fails too, and ends the stream
        if sent:
            self.last_write = time.monotonic()
        return self._core.sent(frame, sent)

    def _rest_owed(self) -> None:
        if isinstance(self._feed, InlineFeed):
            # The handler is deep in the producer, which may wait for
            # minutes: a greenlet of ours finishes the frame meanwhile.
            self._rest_writer = gevent.spawn(self._write_rest)
        else:
            self.wake()

    def _write_rest(self) -> None:
        try:
            self._send_rest()  # a failure stops the producer
        finally:
            self._rest_writer = None
        # What the producer made meanwhile, if it waits still.
        self.flush_beside()

    # The end: the server calls close() on the iterable, whatever happened.

    def close(self) -> None:
        """Release everything; the server calls this when the response ends."""
        core = self._core
        _admitted.discard(self)
        if core.state is NEW:
            core.peer_closed()
            try:
                self._close_source()  # never started, e.g. a HEAD request
            finally:
                self._leave_context()
                self._release_hub()
            return
        if self._released:
            return  # closed already
        self._released = True
        if core.reason is None or core.state is not CLOSED:
            # Neither producer nor stream ended it: the server gave up on a
            # write (broken pipe, timeout) or was stopped.
            if self._sock is not None and peer_closed(self._sock):
                core.peer_closed()
            else:
                core.write_failed()
        _open.discard(self)
        if self._clock is not None:
            _heartbeat.for_current_hub().discard(self, self._clock)
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        if self._transport is not None and core.reason in _NO_NEXT_REQUEST:
            self._transport.close_after_response()
        if core.reason is CloseReason.DRAIN:
            # The server is stopping: make it close this connection after the
            # response, or the browser reconnects on the same kept-alive
            # connection and gets a new stream from this stopping process
            # (gunicorn keeps serving its open connections). With the read
            # side shut, the server's wait for the next request ends at once.
            self._shutdown(socket.SHUT_RD)
        writer, self._rest_writer = self._rest_writer, None
        try:
            if writer is not None:
                writer.kill()
            if self._feed is not None:
                self._feed.close()
                self._feed = None  # it holds the stream: no cycle left
            if not self._ran:
                # No producer ran (a subscription, or the client left before
                # it started): its cleanup is still owed.
                self._cleanup_unstarted()
        finally:
            self._leave_context()
            self._release_hub()

    def _shutdown(self, how: int) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(how)
            except OSError:
                pass

    def _cleanup_unstarted(self) -> None:
        def cleanup() -> None:
            self.end_producing(self.begin_producing())

        self.run(cleanup)

    def _leave_context(self) -> None:
        context = self._context
        if context is None:
            return
        reason = self._core.reason
        error: BaseException | None = None
        if reason is not CloseReason.FINISHED:
            error = self._error or GeneratorExit()
        try:
            context.end(error)
        except Exception:
            self._logger.exception("Exception in a teardown function of an event stream")

    def _call_on_close(self) -> None:
        if self._on_close is not None:
            self._on_close(self._core.reason or CloseReason.DISCONNECT)

    def _close_source(self) -> None:
        close = getattr(self._source, "close", None)
        if close is not None:
            close()

    def _release_hub(self) -> None:
        hub = self.hub
        if not self._own_hub or any(stream.hub is hub for stream in open_streams()):
            return
        self._own_hub = False
        _heartbeat.for_current_hub().stop()
        gevent.sleep(0)  # let pending kills (a heartbeat loop's) run first
        hub.destroy(destroy_loop=True)
