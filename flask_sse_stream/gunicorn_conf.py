"""The gunicorn configuration we recommend for event streams.

Use it as it is, or import its names into your own config file::

    gunicorn -c python:flask_sse_stream.gunicorn_conf myapp:app
    gunicorn -c python:flask_sse_stream.gunicorn_conf -w 4 -b 0.0.0.0:8000 myapp:app

What it changes from gunicorn's defaults, and why:

* ``worker_class = "gevent"``: one greenlet per connection; a sync worker
  would give every stream a whole worker.
* ``worker_connections = 10000`` (default 1000): every open stream holds a
  connection for as long as the browser stays, and past the limit gunicorn
  silently stops accepting *every* request of the worker, publish requests
  included. Raise ``ulimit -n`` to match.
* ``post_worker_init`` drains streams when the worker stops (SIGTERM, a HUP
  reload, ``max_requests`` recycling): gunicorn itself lets streams run
  until ``graceful_timeout`` and then kills the worker, so producers'
  ``finally`` clauses never run and every browser reconnects in the same
  instant. Here each stream gets a final ``retry:`` of ``SSE_DRAIN_RETRY``
  milliseconds plus up to as much again at random, and ends; the producers
  clean up and the worker exits as soon as its streams are gone.
* ``graceful_timeout = 10``: the bound on that drain.
* ``keepalive = 5``: ordinary requests of a page may reuse a connection.

A config of your own can keep the drain with
``from flask_sse_stream.gunicorn_conf import post_worker_init``.
"""

from __future__ import annotations

import os
from typing import Any

import gevent

from .stream import drain

__all__ = [
    "DRAIN_RETRY",
    "graceful_timeout",
    "keepalive",
    "post_worker_init",
    "worker_class",
    "worker_connections",
]

worker_class = "gevent"
worker_connections = 10000
graceful_timeout = 10
keepalive = 5

DRAIN_RETRY = int(os.environ.get("SSE_DRAIN_RETRY", "1000"))
"""Base reconnection delay, in ms, sent to streams when a worker stops."""

_POLL = 0.2  # seconds; gunicorn's own loop looks at `alive` once a second


def _drain_when_stopping(worker: Any) -> None:
    while worker.alive:
        gevent.sleep(_POLL)
    # Until the worker exits: a request already on its way (or on a
    # connection the worker still serves) may open a stream after the first
    # drain; it is drained too.
    while True:
        count = drain(DRAIN_RETRY)
        if count:
            worker.log.info("flask-sse-stream: drained %d stream(s)", count)
        gevent.sleep(_POLL)


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: end this worker's streams cleanly when it stops."""
    gevent.spawn(_drain_when_stopping, worker)
