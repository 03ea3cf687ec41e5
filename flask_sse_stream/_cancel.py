"""Seeing a client go away while its stream has nothing to write.

A server only learns that a client closed the connection when a write fails,
which for a quiet stream can be a heartbeat interval later. Where the WSGI
server tells us the client socket, we watch it in the gevent hub instead: a
closed connection turns readable (end of file) at once. An SSE client sends
nothing after its request, so readable almost always means gone; we look to
be sure and never consume a byte. A client may send bytes after its request
(a stray CRLF, a pipelined request) and close later: the socket then stays
readable, so the watch looks again on a timer until the close comes.

The socket is found under these ``environ`` keys, first match wins:

* ``flask_sse_stream.socket``: our handlers (the :func:`~flask_sse_stream.serve`
  runner's, and :class:`flask_sse_stream.gunicorn.GeventWorker`'s);
* ``gunicorn.socket``: gunicorn's ``gevent`` worker (and its other workers);
* ``gunicorn.sock``: gunicorn's ``gevent_pywsgi`` worker;
* ``werkzeug.socket``: the werkzeug development server (``flask run``).

Anything else (a test client, another server) falls back to failed writes.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable, Mapping
from typing import Any

import gevent
from gevent import monkey

__all__ = ["SOCKET_KEY", "SOCKET_KEYS", "SocketWatch", "find_socket", "peer_closed"]

SOCKET_KEY = "flask_sse_stream.socket"
"""Where our handlers put the client socket in ``environ``."""

SOCKET_KEYS = (SOCKET_KEY, "gunicorn.socket", "gunicorn.sock", "werkzeug.socket")

# The unpatched class: peeking must never wait, even in a patched process.
_RawSocket: type[socket.socket] = monkey.get_original("socket", "socket")
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_READ = 1  # libev/libuv EV_READ

# poll() with POLLRDHUP (Linux) sees the peer's FIN even behind unread bytes,
# where a peek sees only the bytes. gevent's patching removes select.poll.
_poll: Any = monkey.get_original("select", "poll") if hasattr(select, "POLLRDHUP") else None
_GONE = (
    select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL if _poll is not None else 0
)

RECHECK = 0.25
"""Seconds between looks at a socket that turned readable with bytes, not a close."""


def find_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """Return the client socket a WSGI server put in ``environ``, if any."""
    for key in SOCKET_KEYS:
        sock = environ.get(key)
        if sock is not None and hasattr(sock, "fileno"):
            return sock  # type: ignore[no-any-return]
    return None


def peer_closed(sock: socket.socket) -> bool:
    """Tell, without blocking or consuming data, whether the peer has gone."""
    try:
        fd = sock.fileno()
    except OSError:
        return True
    if fd < 0:
        return True
    if _poll is not None:
        poller = _poll()
        poller.register(fd, _GONE)
        return bool(poller.poll(0))
    raw = _RawSocket(fileno=fd)
    try:
        return raw.recv(1, _PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        raw.detach()


class SocketWatch:
    """Call ``callback`` once, from the hub, when the peer of ``sock`` has gone.

    The socket is watched for readability (a close makes it readable at
    once); bytes the client sent instead of a close make it readable too,
    and stay unread, so from then on it is looked at every
    :data:`RECHECK` seconds until the close comes. The callback must not
    block; it runs in the hub greenlet.
    """

    __slots__ = ("_callback", "_sock", "_watcher")

    def __init__(self, sock: socket.socket, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._sock = sock
        self._watcher: Any = gevent.get_hub().loop.io(sock.fileno(), _READ)
        self._watcher.start(self._fire)

    def _fire(self) -> None:
        # The io watcher is level-triggered: stop it before anything else.
        self.stop()
        if peer_closed(self._sock):
            self._callback()
        else:
            self._watcher = gevent.get_hub().loop.timer(RECHECK, RECHECK)
            self._watcher.start(self._recheck)

    def _recheck(self) -> None:
        if peer_closed(self._sock):
            self.stop()
            self._callback()

    def stop(self) -> None:
        """Stop watching; safe to call more than once."""
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher.stop()
            watcher.close()
