"""The gunicorn configuration we recommend for event streams.

Use it as it is, or import its names into your own config file::

    gunicorn -c python:flask_sse_stream.gunicorn_conf myapp:app
    gunicorn -c python:flask_sse_stream.gunicorn_conf -w 4 -b 0.0.0.0:8000 myapp:app

What it changes from gunicorn's defaults, and why:

* ``worker_class = "flask_sse_stream.gunicorn.GeventWorker"``: one greenlet
  per connection (a sync worker would give every stream a whole worker),
  gevent's pywsgi with the library's handler, so that streams write
  heartbeats and events beside it, and a drain when the worker stops (see
  :mod:`flask_sse_stream.gunicorn`).
* ``worker_connections = 10000`` (default 1000): every open stream holds a
  connection for as long as the browser stays, and past the limit gunicorn
  silently stops accepting *every* request of the worker, publish requests
  included. Raise ``ulimit -n`` to match.
* ``post_worker_init`` drains streams when a worker of another class (say
  ``-k gevent``) stops (SIGTERM, a HUP reload, ``max_requests`` recycling):
  gunicorn itself lets streams run until ``graceful_timeout`` and then kills
  the worker, so producers' ``finally`` clauses never run and every browser
  reconnects in the same instant. Here each stream gets a final ``retry:``
  of ``SSE_DRAIN_RETRY`` milliseconds plus up to as much again at random,
  and ends; the producers clean up and the worker exits as soon as its
  streams are gone. (Our worker class drains by itself.)
* ``graceful_timeout = 10``: the bound on that drain.
* ``keepalive = 5``: ordinary requests of a page may reuse a connection.

A config of your own can keep the drain with
``from flask_sse_stream.gunicorn_conf import post_worker_init``.
"""

from __future__ import annotations

from typing import Any

import gevent

from .gunicorn import DRAIN_RETRY, GeventWorker, drain_when_stopping

__all__ = [
    "DRAIN_RETRY",
    "graceful_timeout",
    "keepalive",
    "post_worker_init",
    "worker_class",
    "worker_connections",
]

worker_class = "flask_sse_stream.gunicorn.GeventWorker"
worker_connections = 10000
graceful_timeout = 10
keepalive = 5


def post_worker_init(worker: Any) -> None:
    """gunicorn hook: end this worker's streams cleanly when it stops."""
    if not isinstance(worker, GeventWorker):  # ours drains by itself
        gevent.spawn(drain_when_stopping, worker)
