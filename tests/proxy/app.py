"""The app the proxy tests serve behind nginx, under ``gunicorn -k gevent``.

It records every request as the app saw it (the protocol nginx spoke, its
``Connection`` header, the port nginx connected from, ``Last-Event-ID``) and
what its producers did; ``/debug/state`` returns them. Events carry the
``time.monotonic()`` at which they were produced, a clock every process on
Linux shares, so a client can measure each event's delay through the proxy.

Importing it has no side effect beyond building the app.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import gevent
from flask import Flask, Response, request

from flask_sse_stream import SSE, Event
from flask_sse_stream._stream import open_streams

app = Flask(__name__)
app.config.update(
    SSE_HEARTBEAT_INTERVAL=None,  # the blueprint's streams stay silent between events
    SSE_RETRY=500,
    SSE_HISTORY_SIZE=100,
)
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")

requests: list[dict[str, Any]] = []
finalized: dict[str, float] = {}


@app.before_request
def _record_request() -> None:
    if request.path not in ("/health", "/debug/state"):
        environ = request.environ
        requests.append(
            {
                "path": request.path,
                "query": request.query_string.decode(),
                "protocol": environ.get("SERVER_PROTOCOL"),
                "connection": request.headers.get("Connection"),
                "peer_port": environ.get("REMOTE_PORT"),
                "last_event_id": request.headers.get("Last-Event-ID"),
                "at": time.monotonic(),
            }
        )


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/debug/state")
def state() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "open_streams": len(open_streams()),
        "requests": requests,
        "finalized": finalized,
    }


@app.post("/publish")
def publish() -> dict[str, Any]:
    """Publish events ``start`` .. ``start + count - 1`` to ``channel``."""
    args = request.args
    start = int(args.get("start", 1))
    ids = [
        sse.publish(str(n), channel=args["channel"])
        for n in range(start, start + int(args.get("count", 1)))
    ]
    return {"ids": ids}


def _ticks(count: int, interval: float) -> Iterator[Event]:
    for n in range(1, count + 1):
        yield Event(json.dumps({"n": n, "sent": time.monotonic()}), id=str(n))
        gevent.sleep(interval)


@app.get("/ticks")
def ticks() -> Response:
    """``count`` events, one every ``interval`` seconds, each stamped with its time."""
    args = request.args
    return sse.response(_ticks(int(args.get("count", 10)), float(args.get("interval", 0.05))))


@app.get("/compressed-ticks")
def compressed_ticks() -> Response:
    """As ``/ticks``, compressed with the coding the client accepts (br, else gzip)."""
    args = request.args
    return sse.response(
        _ticks(int(args.get("count", 10)), float(args.get("interval", 0.05))),
        compress=["br", "gzip"],
    )


@app.get("/ticks-without-header")
def ticks_without_header() -> Response:
    """As ``/ticks``, without ``X-Accel-Buffering: no``: the control for buffering."""
    response = ticks()
    del response.headers["X-Accel-Buffering"]
    return response


@app.get("/quiet")
@sse.stream(heartbeat=1)
def quiet() -> Iterator[str]:
    """``before``, ``quiet`` seconds of silence (heartbeats only), ``after``, the end."""
    yield "before"
    gevent.sleep(float(request.args.get("quiet", 10)))
    yield "after"


@app.get("/blocked")
@sse.stream
def blocked() -> Iterator[str]:
    """Says hello, then blocks until cancelled; its ``finally`` is recorded."""
    token = request.args["token"]
    try:
        yield "hello"
        gevent.sleep(600)
        yield "unreachable"
    finally:
        finalized[token] = time.monotonic()
