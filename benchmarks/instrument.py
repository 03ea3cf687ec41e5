"""What every Flask app under benchmark shares: the producers and the probes.

The producers are plain generators of ``str`` data, so the same code runs
behind our ``@sse.stream`` and behind a peer's hand-written framing; only
the serving differs. A producer may also yield :data:`HEARTBEAT` (the peer
with a per-stream timer does), which each app frames as a comment.

The probe endpoints let the load client read what only the server knows:

* ``GET /pid``: the process that serves requests (gunicorn's worker, not
  its master), whose RSS and CPU time the client reads from ``/proc``;
* ``GET /finals?prefix=P``: when each ``/held`` producer whose id starts
  with ``P`` ran its ``finally`` (``time.time()``, same clock as the client);
* ``POST /publish``: puts the body into every ``/idle`` subscriber's queue
  (for fan-out scenarios).

Nothing here patches anything: the server's entry point has done that.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import gevent
from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue
from gevent.queue import Empty, Queue

__all__ = ["HEARTBEAT", "blocked", "held", "idle", "instrument"]

HEARTBEAT = object()
"""Yielded by a producer that times its own heartbeat; framed as a comment."""

FINALS: dict[str, float] = {}
SUBSCRIBERS: set[Queue[str]] = set()


def blocked(seconds: float) -> Iterator[str]:
    """S5: block ``seconds`` before the first event, then idle."""
    gevent.sleep(seconds)
    yield "late"
    gevent.sleep(3600)


def held(stream_id: str, period: float) -> Iterator[str]:
    """S4: one probe event, then an event every ``period`` seconds.

    The ``finally`` records when the stream was cleaned up.
    """
    try:
        yield "probe"
        while True:
            gevent.sleep(period)
            yield "tick"
    finally:
        FINALS[stream_id] = time.time()


def idle(heartbeat: float | None = None) -> Iterator[object]:
    """S1: a subscriber: one probe event, then whatever is published.

    With ``heartbeat`` the producer times its own silence with a timeout on
    its queue (the per-stream timer design) and yields :data:`HEARTBEAT`.
    """
    queue: Queue[str] = Queue()
    SUBSCRIBERS.add(queue)
    try:
        yield "probe"
        while True:
            if heartbeat is None:
                yield queue.get()
                continue
            try:
                yield queue.get(timeout=heartbeat)
            except Empty:
                yield HEARTBEAT
    finally:
        SUBSCRIBERS.discard(queue)


def _pid() -> ResponseReturnValue:
    import flask_sse_stream

    return jsonify(pid=os.getpid(), library=os.path.dirname(flask_sse_stream.__file__))


def _finals() -> ResponseReturnValue:
    prefix = request.args.get("prefix", "")
    return jsonify({key: value for key, value in FINALS.items() if key.startswith(prefix)})


def _publish() -> ResponseReturnValue:
    data = request.get_data(as_text=True)
    for queue in tuple(SUBSCRIBERS):
        queue.put_nowait(data)
    return jsonify(subscribers=len(SUBSCRIBERS))


def instrument(app: Flask) -> None:
    """Add the probe endpoints to ``app``."""
    probes = Blueprint("bench_probes", __name__)
    probes.add_url_rule("/pid", view_func=_pid)
    probes.add_url_rule("/finals", view_func=_finals)
    probes.add_url_rule("/publish", view_func=_publish, methods=["POST"])
    app.register_blueprint(probes)
