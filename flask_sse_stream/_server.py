"""Serving an app with gevent's ``WSGIServer``, and draining it on shutdown."""

from __future__ import annotations

import gc
import http.client
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
from gevent import Timeout, monkey
from gevent.event import Event as Flag
from gevent.pool import Pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from ._cancel import SOCKET_KEY
from ._stream import drain
from ._transport import ENVIRON_KEY, Transport

__all__ = ["SSEHandler", "TransportHandler", "freeze_startup_objects", "lean_greenlets", "serve"]


def lean_greenlets() -> None:
    """Turn off gevent's greenlet-tree tracking, unless ``GEVENT_TRACK_GREENLET_TREE`` is set.

    For our runner and our gunicorn worker, which spawn a greenlet per
    connection: gevent's documented ``track_greenlet_tree`` setting records,
    for each greenlet, the greenlet that spawned it and that one's stack, a
    debugging aid that costs 14 % of the CPU of opening a stream and 0.3 KiB
    per stream (docs/benchmarks.md, S1). ``GEVENT_TRACK_GREENLET_TREE=1``
    keeps it on.
    """
    if "GEVENT_TRACK_GREENLET_TREE" not in os.environ:
        gevent.config.track_greenlet_tree = False


def freeze_startup_objects() -> None:
    """Collect, then move every object alive so far out of the collector's sight.

    For our runner and our gunicorn worker, once the app is loaded and
    before the first request: the app's modules, routes and config live as
    long as the process, yet the cyclic collector would walk them again and
    again. While they sat in its middle generation, each of its collections
    there took 1-3 ms and landed inside whichever request was opening a
    stream (the worst first byte of 50, docs/benchmarks.md, S5). This is
    the standard library's documented ``gc.freeze()``; objects created later
    are collected as usual. Startup objects that become cyclic garbage
    later are freed only by reference counting: set
    ``FLASK_SSE_STREAM_GC_FREEZE=0`` for an app that, while serving, drops
    reference cycles it built at startup.
    """
    if os.environ.get("FLASK_SSE_STREAM_GC_FREEZE", "1") != "0":
        gc.collect()
        gc.freeze()


class TransportHandler(WSGIHandler):
    """gevent's pywsgi handler, offering each request a :class:`Transport`.

    ``environ["flask_sse_stream.transport"]`` lets a stream write beside
    the handler while the handler waits inside it (heartbeats, a
    subscription's new events) and stop a producer that runs in the
    handler's own greenlet; ``environ["flask_sse_stream.socket"]`` lets any
    response watch its client and see a disconnect at once. The transport
    learns only what this handler decides and does: whether it chunks the
    response, and how many body bytes it has written.

    It also fixes what pywsgi's own handler gets wrong for long responses,
    through its overridable methods only:

    * an HTTP/1.0 client that asks for ``Connection: keep-alive`` gets
      ``Connection: close`` with a body that has no length (the close is its
      end), as gunicorn's ``-k gevent`` answers, instead of a kept-alive
      connection whose body never ends;
    * a ``HEAD`` response carries no body, not even a chunked body's end;
    * a request line and its headers must arrive within
      :attr:`request_timeout` seconds (also how long a kept-alive
      connection may wait for its next request): a client that sends a
      request byte by byte, or never finishes it, no longer holds a
      connection forever;
    * a request with too many headers is answered 400 without a traceback
      in the log.
    """

    # Slots, not the instance dict: three more keys made pywsgi's handler
    # dict grow to its next size, 1.4 KiB more per connection (tracemalloc).
    __slots__ = ("_sse_deadline", "_sse_head", "_sse_protocol", "_sse_transport", "client_socket")

    request_timeout: float | None = 10.0
    """Seconds a client has to send a request line and its headers, counted
    from when the handler starts waiting for it; ``None``: forever."""

    READ_BUFFER = 4096
    """Most bytes asked of the socket in one read of the request.

    The connection's reader (:class:`_Reader`) keeps no buffer of its own:
    what it read past the request stays until it is read, and nothing
    else, so a stream's connection, which reads one request and then only
    writes for minutes, holds no read buffer meanwhile (pywsgi's default
    reader keeps 8 KiB, and its file objects ~0.4 KiB more, per connection).
    """

    def __init__(self, sock: Any, address: Any, server: Any) -> None:
        super().__init__(sock, address, server)
        self.rfile.close()  # only drops the file's reference to the socket
        # pywsgi reads rfile with readline() and read() only (typed as a BufferedReader).
        self.rfile = _Reader(sock, self.READ_BUFFER)  # type: ignore[assignment]
        self.client_socket = sock
        """The connection's socket, as the server gave it to the handler."""
        self._sse_transport: Transport | None = None
        self._sse_protocol = ""
        self._sse_head = False
        self._sse_deadline = 0.0

    def read_requestline(self) -> str:
        timeout = self.request_timeout
        if timeout is None:
            return super().read_requestline()
        self._sse_deadline = time.monotonic() + timeout
        timer = Timeout(timeout)
        timer.start()
        try:
            return super().read_requestline()
        except Timeout as exc:
            if exc is not timer:
                raise
            return ""  # as if the client had closed: the connection ends
        finally:
            timer.close()

    def read_request(self, raw_requestline: str) -> Any:
        timer: Timeout | None = None
        if self.request_timeout is not None:
            remaining = self._sse_deadline - time.monotonic()
            if remaining <= 0:
                raise ValueError("the request's headers took too long")
            timer = Timeout(remaining, ValueError("the request's headers took too long"))
            timer.start()
        try:
            return super().read_request(raw_requestline)
        except http.client.HTTPException as exc:
            # e.g. "got more than 100 headers": the client's error, which
            # pywsgi logs in one line when it is a ValueError.
            raise ValueError(str(exc) or type(exc).__name__) from None
        finally:
            if timer is not None:
                timer.close()

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        self._sse_protocol = environ.get("SERVER_PROTOCOL", "")
        self._sse_head = environ.get("REQUEST_METHOD") == "HEAD"
        transport = self._sse_transport = Transport(self.client_socket)
        environ[ENVIRON_KEY] = transport
        environ[SOCKET_KEY] = self.client_socket
        return environ

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        code = int(status.split(" ", 1)[0])
        names = {name.lower() for name, _ in headers}
        has_body = not self._sse_head and code not in (101, 204, 304)
        if (
            has_body
            and self._sse_protocol != "HTTP/1.1"
            and not names & {"content-length", "connection"}
        ):
            # A body with no length is delimited by the close (RFC 9112
            # section 6.3): pywsgi would answer "keep-alive" to an HTTP/1.0
            # client that asks for it, and the body would never end.
            headers = [*headers, ("Connection", "close")]
        write: Callable[[bytes], None] = super().start_response(status, headers, exc_info)
        transport = self._sse_transport
        if transport is not None:
            # pywsgi chunks an HTTP/1.1 response that has a body and no
            # Content-Length; an HTTP/1.0 one is delimited by the close.
            transport.response_started(
                chunked=self._sse_protocol == "HTTP/1.1"
                and has_body
                and "content-length" not in names
            )
        return write

    def finalize_headers(self) -> None:
        super().finalize_headers()
        if self._sse_head and self.response_use_chunked:
            # A HEAD response has no body: no chunks, and no chunked body's
            # end after the headers, which the client would read as the
            # start of the next response.
            self.response_use_chunked = False
            headers: list[tuple[Any, Any]] = list(self.response_headers or ())
            self.response_headers = [
                (name, value) for name, value in headers if name.lower() != b"transfer-encoding"
            ]

    def write(self, data: bytes) -> None:
        if self._sse_head:
            data = b""  # the headers only
        super().write(data)
        transport = self._sse_transport
        if transport is not None:
            transport.body_written(len(data))

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        transport = self._sse_transport
        if transport is not None and transport.closing and issubclass(t, OSError):
            # The stream dropped its client (gone, or a write that took
            # longer than SSE_WRITE_TIMEOUT, ended by shutting the socket
            # down): the write that failed is not the server's error.
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def handle_one_response(self) -> None:
        try:
            super().handle_one_response()
        finally:
            transport, self._sse_transport = self._sse_transport, None
            if transport is not None:
                if transport.closing:
                    self.close_connection = True
                transport.release()


class _Reader:
    """A connection's reader for pywsgi: ``readline``, ``read`` and ``readinto`` of a socket.

    What :meth:`socket.socket.makefile` gives, without its fixed buffer:
    only the bytes read from the socket and not yet asked for are kept (a
    request's bytes past its headers, a pipelined request), usually none.
    Blocks as the socket does (gevent's, cooperatively) and raises what its
    ``recv`` raises.
    """

    __slots__ = ("_chunk", "_rest", "_sock", "closed")

    def __init__(self, sock: Any, chunk: int) -> None:
        self._sock = sock
        self._chunk = chunk
        self._rest = b""
        self.closed = False

    def _recv(self, size: int) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        return self._sock.recv(size)  # type: ignore[no-any-return]

    def readline(self, size: int | None = -1) -> bytes:
        """Read up to and including the next ``\\n``, at most ``size`` bytes; ``b""`` at the end."""
        limit = -1 if size is None else size
        data: bytes | bytearray = self._rest
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end >= 0 and (limit < 0 or end < limit):
                end += 1
                break
            if 0 <= limit <= len(data):
                end = limit
                break
            start = len(data)
            more = self._recv(self._chunk)
            if not more:
                end = len(data)
                break
            if start:
                # A line over several recv()s: appending to bytes copies
                # everything read so far, quadratic in a long line (as read()).
                data = bytearray(data) if isinstance(data, bytes) else data
                data += more
            else:
                data = more
        self._rest = bytes(data[end:])
        return bytes(data[:end])

    def read(self, size: int | None = -1) -> bytes:
        """Read ``size`` bytes, fewer only at the end; all until the end if ``size`` < 0."""
        # A bytearray: appending to bytes copies everything read so far,
        # quadratic in a large body.
        buffer = bytearray(self._rest)
        limit = -1 if size is None else size
        while limit < 0 or len(buffer) < limit:
            want = self._chunk if limit < 0 else max(limit - len(buffer), self._chunk)
            more = self._recv(min(want, 65536))
            if not more:
                break
            buffer += more
        data = bytes(buffer)
        if 0 <= limit < len(data):
            self._rest = data[limit:]
            return data[:limit]
        self._rest = b""
        return data

    def readinto(self, buffer: Any) -> int:
        """Read into ``buffer`` what is kept, else one ``recv``; 0 at the end."""
        view = memoryview(buffer).cast("B")
        data = self._rest or self._recv(min(len(view), 65536))
        count = min(len(data), len(view))
        view[:count] = data[:count]
        self._rest = data[count:]
        return count

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Forget what was read and not asked for; the socket stays open."""
        self.closed = True
        self._rest = b""


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
    request_timeout: float | None = 10.0,
    access_log: bool = True,
    on_ready: Callable[[str, int], None] | None = None,
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain and return.

    Draining stops accepting connections, closes idle keep-alive
    connections, ends every open stream with a last ``retry:`` field
    (``drain_retry`` milliseconds plus up to as much again at random, so
    clients do not all come back at once), then waits up to
    ``drain_timeout`` seconds for responses to finish before it cuts them.
    Then it closes the brokers the app's :class:`~flask_sse_stream.SSE` made.

    A client has ``request_timeout`` seconds to send a request line and its
    headers (``None``: for ever); it is also how long an idle kept-alive
    connection waits for its next request.

    It turns gevent's greenlet-tree tracking off (:func:`lean_greenlets`;
    ``GEVENT_TRACK_GREENLET_TREE=1`` keeps it on) and, once listening,
    hides the objects alive so far from the cyclic garbage collector
    (:func:`freeze_startup_objects`; ``FLASK_SSE_STREAM_GC_FREEZE=0`` does not).

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
    lean_greenlets()
    pool = Pool()  # unbounded; a pool lets shutdown wait for the handlers

    class Handler(SSEHandler):
        __slots__ = ()

    Handler.request_timeout = request_timeout
    server = _DrainingServer(
        (host, port),
        app,
        handler_class=Handler,
        spawn=pool,
        log=sys.stderr if access_log else None,
    )
    server.start()
    freeze_startup_objects()
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
        from ._extension import close_brokers  # Flask: not before the patching

        close_brokers()


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
