"""Serving an app with gevent's ``WSGIServer``, and draining it on shutdown."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey
from gevent.event import Event as Flag
from gevent.pywsgi import WSGIHandler, WSGIServer

from .stream import drain

__all__ = ["SSEHandler", "serve"]


class SSEHandler(WSGIHandler):
    """gevent's pywsgi handler, with the client socket in the environ.

    ``environ["flask_sse_stream.socket"]`` lets a stream watch its client and
    see a disconnect at once, instead of at its next failed write.
    """

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        environ["flask_sse_stream.socket"] = self.socket
        return environ


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

    Draining stops accepting connections, ends every open stream with a last
    ``retry:`` field (``drain_retry`` milliseconds plus up to as much again
    at random, so clients do not all come back at once), then waits up to
    ``drain_timeout`` seconds for responses to finish before it cuts them.

    The process must be patched by gevent first: run the app with
    ``flask-sse-stream serve module:app``, or call
    ``gevent.monkey.patch_all()`` at the very top of your entry point.

    :param on_ready: called with the bound host and port once listening
        (``port=0`` picks a free port).
    """
    if not monkey.is_module_patched("socket"):
        raise RuntimeError(
            "serve() needs a process patched by gevent, or every stream would block "
            "the others: start it with `flask-sse-stream serve module:app`, or call "
            "`from gevent import monkey; monkey.patch_all()` before importing anything else."
        )
    server = WSGIServer(
        (host, port),
        app,
        handler_class=SSEHandler,
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
        server.close()  # stop accepting; open connections go on
        drain(drain_retry)
        server.stop(timeout=drain_timeout)
