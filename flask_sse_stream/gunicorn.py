"""A gunicorn worker for event streams: ``flask_sse_stream.gunicorn.GeventWorker``.

::

    gunicorn -k flask_sse_stream.gunicorn.GeventWorker myapp:app
    gunicorn -c python:flask_sse_stream.gunicorn_conf myapp:app   # selects it

It is gunicorn's ``gevent_pywsgi`` worker (gevent's pywsgi server in each
worker process) with the library's own request handler,
:class:`~flask_sse_stream._server.TransportHandler`, and four additions:

* streams write beside the handler (heartbeats and a subscription's new
  events go to the socket without waking the request's greenlet) and a
  generator view runs in the request's greenlet, with no second greenlet:
  less memory and CPU per stream (``docs/benchmarks.md``);
* when the worker stops (SIGTERM, a HUP reload, ``max_requests``), every
  stream is drained: a final ``retry:`` of ``SSE_DRAIN_RETRY`` milliseconds
  plus up to as much again at random, the producers' ``finally`` clauses
  run, and the worker exits as soon as its streams are gone;
* gevent's greenlet-tree tracking is off (``GEVENT_TRACK_GREENLET_TREE=1``
  turns it back on): opening a stream costs 14 % less CPU;
* once the app is loaded, the objects alive so far are frozen out of the
  cyclic garbage collector's sight (``gc.freeze()``;
  ``FLASK_SSE_STREAM_GC_FREEZE=0`` leaves them): its collections no longer
  walk the app's modules and routes inside a request.

Plain ``-k gevent`` and ``-k gevent_pywsgi`` serve streams correctly too,
cancellation on disconnect included; they write every byte through the
server.
"""

from __future__ import annotations

import os
from typing import Any

import gevent
import gevent.event
from gunicorn.workers.ggevent import (  # type: ignore[import-untyped]
    GeventPyWSGIWorker,
    PyWSGIHandler,
)

from ._server import TransportHandler, freeze_startup_objects, lean_greenlets
from ._stream import drain

__all__ = ["DRAIN_RETRY", "GeventWorker", "drain_when_stopping"]

DRAIN_RETRY = int(os.environ.get("SSE_DRAIN_RETRY", "1000"))
"""Base reconnection delay, in ms, sent to streams when a worker stops."""

_POLL = 0.2  # seconds; gunicorn's own loop looks at `alive` once a second


class Handler(TransportHandler, PyWSGIHandler):  # type: ignore[misc]
    """gunicorn's pywsgi handler (access log, ``gunicorn.sock``) with our transport."""


class GeventWorker(GeventPyWSGIWorker):  # type: ignore[misc]
    """gunicorn's ``gevent_pywsgi`` worker with the library's handler, draining streams."""

    wsgi_handler = Handler
    _sse_alive = True
    _sse_stopping: tuple[Any, gevent.event.Event] | None = None  # (the hub's loop, set on stop)

    # gunicorn clears `alive` wherever the worker must stop (a signal, a
    # reload, `max_requests`, its parent gone): the drain starts right then,
    # instead of a greenlet waking five times a second to look (a tenth of
    # the worker's idle CPU at 10,000 streams, docs/benchmarks.md S1).
    @property
    def alive(self) -> bool:
        return self._sse_alive

    @alive.setter
    def alive(self, value: bool) -> None:
        self._sse_alive = value
        stopping = self._sse_stopping
        if not value and stopping is not None:
            loop, event = stopping
            # From a signal handler or gunicorn's reloader thread alike.
            loop.run_callback_threadsafe(event.set)

    def run(self) -> None:
        # gunicorn's own gevent worker gives every request line and its
        # headers `keepalive` seconds; ours does the same (a slow client
        # that never finishes its request no longer holds a connection).
        timeout = float(self.cfg.keepalive) or Handler.request_timeout

        class TimedHandler(Handler):
            __slots__ = ()
            request_timeout = timeout

        self.wsgi_handler = TimedHandler
        lean_greenlets()
        stopped = gevent.event.Event()
        self._sse_stopping = (gevent.get_hub().loop, stopped)
        if not self._sse_alive:
            stopped.set()
        gevent.spawn(self._drain_once_stopped, stopped)
        freeze_startup_objects()  # the app is loaded (gunicorn's init_process)
        try:
            super().run()
        finally:
            from ._extension import close_brokers  # Flask: not before the patching

            close_brokers()

    def _drain_once_stopped(self, stopped: gevent.event.Event) -> None:
        stopped.wait()
        _drain_until_exit(self)


def drain_when_stopping(worker: Any) -> None:
    """Drain the worker's streams once ``worker.alive`` is cleared, until it exits.

    For gunicorn's own worker classes (``gunicorn_conf.post_worker_init``),
    which say nothing when they stop: ``alive`` is looked at five times a
    second.
    """
    while worker.alive:
        gevent.sleep(_POLL)
    _drain_until_exit(worker)


def _drain_until_exit(worker: Any) -> None:
    """Drain the worker's streams now, and again every 0.2 s until the worker exits."""
    # A request already on its way (or on a connection the worker still
    # serves) may open a stream after the first drain; it is drained too.
    while True:
        count = drain(DRAIN_RETRY)
        if count:
            worker.log.info("flask-sse-stream: drained %d stream(s)", count)
        gevent.sleep(_POLL)
