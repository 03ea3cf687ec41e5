"""Transports: what our own server handlers let a stream do beside them.

A stream on any WSGI server writes through the server: it returns chunks
from ``next()`` and the server frames and sends them. Waking the server's
handler for every two-byte heartbeat, or for one event among a thousand
subscribers, costs more than the ``send()`` itself (``docs/benchmarks.md``),
so the handlers this library ships (the runner's, and the one in
:class:`flask_sse_stream.gunicorn.GeventWorker`) offer more: a
:class:`Transport` under the ``environ`` key :data:`ENVIRON_KEY`.

Nothing here looks into another project's objects. The handler tells the
transport what it decided (the response is chunked) and what it wrote (the
body bytes it was given, after it wrote them); the stream may then send a
chunk on the socket itself while the handler waits inside the stream, but
only while the server has written exactly the bytes the stream returned
(a middleware that changed the body would change that count), over a
plain gevent socket (not TLS) whose descriptor is non-blocking.
"""

from __future__ import annotations

import os
from typing import Final

import gevent
from gevent.socket import socket as GeventSocket

ENVIRON_KEY: Final = "flask_sse_stream.transport"
"""The ``environ`` key under which our handlers put the request's :class:`Transport`."""


class Interrupted(gevent.GreenletExit):
    """Raised in the handler greenlet, where it waits in a producer, to stop it."""


class Transport:
    """One request's connection, as the handler serving it lets a stream use it.

    Made by the handler, in the handler's greenlet, once per request.
    """

    __slots__ = ("_fd", "_greenlet", "_written", "closing", "socket")

    def __init__(self, sock: GeventSocket) -> None:
        self.socket = sock
        """The client socket (watched for a disconnect)."""
        self._greenlet = gevent.getcurrent()
        self._written = 0
        # The descriptor sent on beside the handler: >= 0 only while a chunked
        # response on gevent's plain, non-blocking socket allows it.
        self._fd = -1
        self.closing = False
        """Whether the connection must close after this response (the stream says so)."""

    # The handler's side.

    def response_started(self, *, chunked: bool) -> None:
        """The handler began a response; ``chunked`` if it frames the body in chunks."""
        sock = self.socket
        self._fd = -1
        if chunked and type(sock) is GeventSocket:
            fd = sock.fileno()
            # gevent keeps its sockets' descriptors non-blocking, so a write
            # on the descriptor returns at once; on a blocking one it would
            # wait with the whole process: then nothing goes beside.
            if fd >= 0 and not os.get_blocking(fd):
                self._fd = fd
        self._written = 0

    def body_written(self, count: int) -> None:
        """The handler has written ``count`` more body bytes it was given."""
        self._written += count

    def release(self) -> None:
        """The response is over: nothing may be sent beside the handler any more.

        The handler must call this when it is done with the request.
        """
        self._fd = -1

    # The stream's side.

    def can_send(self, body_bytes: int) -> bool:
        """Whether a chunk may go beside the handler now.

        :param body_bytes: how many body bytes the stream has returned to
            the server; the handler must have written exactly those.
        """
        return self._fd >= 0 and body_bytes > 0 and self._written == body_bytes

    def send(self, frame: bytes) -> int:
        """Send what fits of ``frame`` without waiting; return how many bytes went.

        Only while :meth:`can_send` allows it.

        :raises OSError: if the connection is broken.
        """
        # On the descriptor itself: gevent's send() would wait for room, and
        # a second socket object on the descriptor costs ~2 us to make, per
        # stream (a tenth of the idle CPU at 10,000 streams, measured).
        try:
            return os.write(self._fd, frame)
        except BlockingIOError:
            return 0

    def send_all(self, data: bytes) -> None:
        """Send all of ``data``, waiting for the socket as long as it takes.

        :raises OSError: if the connection is broken.
        """
        self.socket.sendall(data)

    def close_after_response(self) -> None:
        """Ask the handler to close the connection after this response.

        For a stream that ended because its client went away, its write
        failed or the server drains: bytes the client sent meanwhile (a
        stray CRLF) must not be read as a next request.
        """
        self.closing = True

    def interrupt(self) -> None:
        """Raise :class:`Interrupted` in the handler greenlet, which waits in a producer.

        Only for a stream whose producer runs in the handler greenlet, and
        only while it waits there (not while the handler writes).
        """
        self._greenlet.throw(Interrupted)
