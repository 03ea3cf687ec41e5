"""Writing beside the server: a small frame straight to the client socket.

An idle stream's heartbeat is two bytes per interval. Waking the server's
handler greenlet to write them through the server costs more than the
``send()`` itself (the switch there and back, the server's write path;
measured in ``docs/benchmarks.md``), and at 10,000 streams that is most of
a worker's idle CPU.

While the handler greenlet is parked inside the stream, waiting for
something to write, the server has finished every write the stream gave it
and writes nothing until the stream returns its next chunk. In that window
the stream may send a frame on the socket itself, framed as the server
frames a chunk, but only where it can prove that the server passes its
chunks to the socket unchanged:

* gevent's pywsgi (our runner, ``gunicorn -k gevent_pywsgi``): the handler
  that called the app is iterating this very stream object (no middleware
  wrapped the body), its response is chunked and its headers are sent;
* gunicorn's own HTTP writer (``gunicorn -k gevent``): the response is
  exactly gunicorn's ``Response``, chunked, its headers sent, and it has
  written exactly as many body bytes as the stream returned (a middleware
  that changed or held back the body would change that count).

Anything else gets no :class:`DirectWriter` and the stream wakes its
handler as before: a middleware that wraps ``start_response``, TLS (the
socket must be gevent's plain socket), HTTP/1.0 (no chunks), the werkzeug
development server, a test client.

A frame is sent with one non-blocking ``send()``. If the socket's buffer is
full nothing is sent and the caller falls back to the handler; if only part
of it fits, the rest is the caller's to send before anything else.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from gevent.pywsgi import WSGIHandler
from gevent.socket import socket as GeventSocket

__all__ = ["DirectWriter", "chunk", "writer_for"]


def chunk(data: bytes) -> bytes:
    """Frame ``data`` as one HTTP/1.1 chunk, as pywsgi and gunicorn do."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class DirectWriter:
    """The server behind one response, and the checks that make a direct write safe."""

    __slots__ = ("_owner", "_pywsgi")

    def __init__(self, owner: Any, *, pywsgi: bool) -> None:
        self._owner = owner
        self._pywsgi = pywsgi

    def socket_for(self, body: object, body_bytes: int) -> GeventSocket | None:
        """Return the socket to write on beside the server, or ``None``.

        :param body: the stream asking; the server must be iterating it.
        :param body_bytes: how many bytes the stream has returned so far.
        """
        owner = self._owner
        if self._pywsgi:
            if owner.result is not body or not owner.response_use_chunked:
                return None
            sock = owner.socket
        else:
            if not owner.chunked or owner.sent != body_bytes:
                return None
            sock = owner.sock
        if not owner.headers_sent or type(sock) is not GeventSocket:
            return None
        return sock

    @staticmethod
    def send(sock: GeventSocket, frame: bytes) -> int:
        """Send what fits of ``frame`` now; return how many bytes went (0 if none).

        :raises OSError: if the connection is broken.
        """
        try:
            return sock.send(frame, 0, 0.0)  # type: ignore[call-arg]
        except BlockingIOError:
            return 0


def writer_for(start_response: Callable[..., Any]) -> DirectWriter | None:
    """Return a :class:`DirectWriter` if ``start_response`` is a known server's own."""
    owner = getattr(start_response, "__self__", None)
    if owner is None:
        return None
    if isinstance(owner, WSGIHandler):
        return DirectWriter(owner, pywsgi=True)
    gunicorn_wsgi = sys.modules.get("gunicorn.http.wsgi")
    # Exactly gunicorn's class: a subclass may frame the body its own way.
    if gunicorn_wsgi is not None and type(owner) is getattr(gunicorn_wsgi, "Response", None):
        return DirectWriter(owner, pywsgi=False)
    return None
