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
plain gevent socket (not TLS).
"""

from __future__ import annotations

import socket
from typing import Final

import gevent
from gevent import monkey
from gevent.socket import socket as GeventSocket

ENVIRON_KEY: Final = "flask_sse_stream.transport"
"""The ``environ`` key under which our handlers put the request's :class:`Transport`."""


# The standard library's class, unpatched: its send() never waits.
_RawSocket: type[socket.socket] = monkey.get_original("socket", "socket")


class Interrupted(gevent.GreenletExit):
    """Raised in the handler greenlet, where it waits in a producer, to stop it."""


class Transport:
    """One request's connection, as the handler serving it lets a stream use it.

    Made by the handler, in the handler's greenlet, once per request.
    """

    __slots__ = ("_chunked", "_greenlet", "_raw", "_written", "closing", "socket")

    def __init__(self, sock: GeventSocket) -> None:
        self.socket = sock
        """The client socket (watched for a disconnect)."""
        self._greenlet = gevent.getcurrent()
        self._chunked = False
        self._written = 0
        self._raw: socket.socket | None = None
        self.closing = False
        """Whether the connection must close after this response (the stream says so)."""

    # The handler's side.

    def response_started(self, *, chunked: bool) -> None:
        """The handler began a response; ``chunked`` if it frames the body in chunks."""
        self._chunked = chunked and type(self.socket) is GeventSocket
        self._written = 0

    def body_written(self, count: int) -> None:
        """The handler has written ``count`` more body bytes it was given."""
        self._written += count

    def release(self) -> None:
        """The response is over: nothing may be sent beside the handler any more.

        The handler must call this when it is done with the request.
        """
        self._chunked = False
        raw, self._raw = self._raw, None
        if raw is not None:
            raw.detach()  # the descriptor is the server's: never close it

    # The stream's side.

    def can_send(self, body_bytes: int) -> bool:
        """Whether a chunk may go beside the handler now.

        :param body_bytes: how many body bytes the stream has returned to
            the server; the handler must have written exactly those.
        """
        return self._chunked and body_bytes > 0 and self._written == body_bytes

    def send(self, frame: bytes) -> int:
        """Send what fits of ``frame`` without waiting; return how many bytes went.

        :raises OSError: if the connection is broken.
        """
        raw = self._raw
        if raw is None:
            # A second, unpatched socket object on the same descriptor (its
            # send() with MSG_DONTWAIT returns at once where gevent's would
            # wait), kept until release() detaches it.
            sock = self.socket
            raw = self._raw = _RawSocket(sock.family, sock.type, sock.proto, sock.fileno())
        try:
            return raw.send(frame, socket.MSG_DONTWAIT)
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
