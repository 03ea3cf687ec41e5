"""Serving an app with gevent's ``WSGIServer``, and draining it on shutdown."""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey
from gevent.event import Event as Flag
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from ._cancel import SOCKET_KEY
from ._stream import drain
from ._transport import ENVIRON_KEY, Transport

__all__ = ["SSEHandler", "TransportHandler", "serve"]


class TransportHandler(WSGIHandler):
    """gevent's pywsgi handler, offering each request a :class:`Transport`.

    ``environ["flask_sse_stream.transport"]`` lets a stream write beside
    the handler while the handler waits inside it (heartbeats, a
    subscription's new events) and stop a producer that runs in the
    handler's own greenlet; ``environ["flask_sse_stream.socket"]`` lets any
    response watch its client and see a disconnect at once. The transport
    learns only what this handler decides and does: whether it chunks the
    response, and how many body bytes it has written.
    """

    # Slots, not the instance dict: three more keys made pywsgi's handler
    # dict grow to its next size, 1.4 KiB more per connection (tracemalloc).
    __slots__ = ("_sse_protocol", "_sse_transport", "client_socket")

    READ_BUFFER = 512
    """Bytes of the per-connection read buffer (pywsgi's default is 8 KiB).

    A stream's connection reads one request and then only writes, for
    minutes; at 10,000 streams the default buffers alone hold 80 MiB.
    Requests with longer lines or bodies are still read whole, in more
    reads.
    """

    def __init__(self, sock: Any, address: Any, server: Any) -> None:
        super().__init__(sock, address, server)
        self.rfile.close()  # only drops the file's reference to the socket
        self.rfile = sock.makefile("rb", self.READ_BUFFER)
        self.client_socket = sock
        """The connection's socket, as the server gave it to the handler."""
        self._sse_transport: Transport | None = None
        self._sse_protocol = ""

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        self._sse_protocol = environ.get("SERVER_PROTOCOL", "")
        transport = self._sse_transport = Transport(self.client_socket)
        environ[ENVIRON_KEY] = transport
        environ[SOCKET_KEY] = self.client_socket
        return environ

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        write: Callable[[bytes], None] = super().start_response(status, headers, exc_info)
        transport = self._sse_transport
        if transport is not None:
            # pywsgi chunks an HTTP/1.1 response that has a body and no
            # Content-Length; an HTTP/1.0 one is delimited by the close.
            code = int(status.split(" ", 1)[0])
            transport.response_started(
                chunked=self._sse_protocol == "HTTP/1.1"
                and code not in (101, 204, 304)
                and not any(name.lower() == "content-length" for name, _ in headers)
            )
        return write

    def write(self, data: bytes) -> None:
        super().write(data)
        transport = self._sse_transport
        if transport is not None:
            transport.body_written(len(data))

    def handle_one_response(self) -> None:
        try:
            super().handle_one_response()
        finally:
            transport, self._sse_transport = self._sse_transport, None
            if transport is not None:
                transport.release()


class SSEHandler(TransportHandler):
    """The handler of our runner: a :class:`TransportHandler` that drains.

    Under :func:`serve`, once the server drains, each connection closes
    after its response (its next request line reads as the end) and an idle
    keep-alive connection is closed at once, so clients reconnect to the
    next server instead of this one.
    """

    def read_requestline(self) -> str:
        server = self.server
        if not isinstance(server, _DrainingServer):
            return super().read_requestline()
        if server.draining:
            return ""  # as if the client had closed: the connection ends
        server.idle.add(self)
        try:
            return super().read_requestline()
        finally:
            server.idle.discard(self)


class _DrainingServer(WSGIServer):
    """A ``WSGIServer`` that knows when it drains and which connections are idle."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False
        self.idle: set[SSEHandler] = set()

    def close_idle(self) -> None:
        """Close the connections that wait for a next request."""
        for handler in list(self.idle):
            sock = handler.client_socket
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass


def serve(
    app: Callable[..., Any],
    host: str = "127.0.0.1",
    port: int = 5000,
    *,
    drain_timeout: float = 5.0,
    drain_retry: int = 1000,
    access_log: bool = True,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain and return.

    Draining stops accepting connections, closes idle keep-alive
    connections, ends every open stream with a last ``retry:`` field
    (``drain_retry`` milliseconds plus up to as much again at random, so
    clients do not all come back at once), then waits up to
    ``drain_timeout`` seconds for responses to finish before it cuts them.

    The process must be patched by gevent first: run the app with
    ``flask-sse-stream serve module:app``, or call
    ``gevent.monkey.patch_all()`` at the very top of your entry point.

    :param on_ready: called with the bound host and port once listening
        (``port=0`` picks a free port).
    :raises RuntimeError: if gevent has not patched the process.
    """
    if not monkey.is_module_patched("socket"):
        raise RuntimeError(
            "serve() needs a process patched by gevent, or every stream would block "
            "the others: start it with `flask-sse-stream serve module:app`, or call "
            "`from gevent import monkey; monkey.patch_all()` before importing anything else."
        )
    pool = Pool()  # unbounded; a pool lets shutdown wait for the handlers
    server = _DrainingServer(
        (host, port),
        app,
        handler_class=SSEHandler,
        spawn=pool,
        log=sys.stderr if access_log else None,
    )
    server.start()
    if on_ready is not None:
        on_ready(host, server.socket.getsockname()[1])
    stop = Flag()
    handlers = [gevent.signal_handler(sig, stop.set) for sig in (signal.SIGTERM, signal.SIGINT)]
    try:
        stop.wait()
    finally:
        for handler in handlers:
            handler.cancel()
        _drain(server, pool, drain_retry, drain_timeout)


def _drain(server: _DrainingServer, pool: Pool, retry: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    server.close()  # stop accepting; open connections go on
    server.draining = True
    server.close_idle()
    drain(retry)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or pool.join(timeout=min(remaining, 0.1)):
            break
        # A request read just before the drain may have opened a stream since.
        drain(retry)
        server.close_idle()
    pool.kill(block=True, timeout=1)
