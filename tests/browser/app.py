"""The app the browser tests serve: the channels blueprint, a test page, and
the views the demo lacks (a stream that ends, one that blocks, one that
replays from a file, a way to cut every open stream).

It runs in a server subprocess (our runner, or gunicorn) and records what
the browser sent (``Last-Event-ID``, when each stream request arrived) and
what its producers did, in plain structures that ``/debug/state`` returns.
Timestamps are ``time.monotonic()``, a clock every process on Linux shares,
so a test can compare them with its own.

Importing it has no side effect beyond building the app: the server
processes patch themselves in their own entry points.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
from flask import Flask, Response, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_sse_stream import SSE, CloseReason, Event
from flask_sse_stream._stream import drain, open_streams

app = Flask(__name__)
app.config.update(
    SSE_HEARTBEAT_INTERVAL=5,
    SSE_RETRY=300,
    SSE_HISTORY_SIZE=20,
    SSE_WRITE_TIMEOUT=2,
)
ORIGIN = os.environ.get("BROWSER_TEST_ORIGIN")
"""The origin of the test page, allowed to open streams cross-origin with cookies."""
if ORIGIN:
    app.config.update(SSE_CORS_ORIGINS=[ORIGIN], SSE_CORS_CREDENTIALS=True)
if os.environ.get("BROWSER_TEST_BROKER_URL"):
    app.config["SSE_BROKER_URL"] = os.environ["BROWSER_TEST_BROKER_URL"]
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")

PAGE = Path(__file__).with_name("page.html")

JOURNAL = os.environ.get("BROWSER_TEST_JOURNAL")
"""A file of events, one per line, for ``/journal``: it outlives a worker."""

requests: list[dict[str, Any]] = []
started: dict[str, float] = {}
finalized: dict[str, float] = {}
closed: dict[str, str] = {}


@app.before_request
def _record_request() -> None:
    if request.method != "POST" and request.path not in ("/health", "/debug/state", "/page"):
        requests.append(
            {
                "method": request.method,
                "path": request.path,
                "query": request.query_string.decode(),
                "origin": request.headers.get("Origin"),
                "last_event_id": request.headers.get("Last-Event-ID"),
                "at": time.monotonic(),
            }
        )


@sse.on_close
def _record_close(reason: CloseReason) -> None:
    token = request.args.get("token")
    if token is not None:
        closed[token] = reason.value


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/debug/state")
def state() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "open_streams": len(open_streams()),
        "requests": requests,
        "started": started,
        "finalized": finalized,
        "closed": closed,
        "encodings": encodings,
    }


@app.get("/page")
def page() -> Response:
    """The test page: ``?src=<stream url>&listen=<event type>,...``."""
    return app.response_class(PAGE.read_bytes(), content_type="text/html; charset=utf-8")


@app.post("/publish")
def publish() -> dict[str, Any]:
    """Publish ``{"channel", "data", "event"?}``, or ``count`` numbered events."""
    body: dict[str, Any] = request.get_json()
    channel = body["channel"]
    if "data" in body:
        return {"ids": [sse.publish(body["data"], channel=channel, event=body.get("event"))]}
    start = int(body.get("start", 1))
    return {
        "ids": [
            sse.publish(str(n), channel=channel)
            for n in range(start, start + int(body.get("count", 1)))
        ]
    }


@app.post("/debug/cut")
def cut() -> dict[str, Any]:
    """End every open stream with a final ``retry:``, then publish what the clients miss.

    ``drain`` does not switch greenlets, so the ended streams' producers are
    killed before they take anything published here: the clients can only
    get those events by reconnecting with ``Last-Event-ID``.
    """
    body: dict[str, Any] = request.get_json()
    at = time.monotonic()
    count = drain(int(body["retry"]), jitter=0)
    start = int(body.get("start", 1))
    ids = [
        sse.publish(str(n), channel=body["channel"])
        for n in range(start, start + int(body.get("count", 0)))
    ]
    return {"streams": count, "at": at, "ids": ids}


@app.get("/blocked")
@sse.stream
def blocked() -> Iterator[Event]:
    """Says hello (naming its process), then blocks in ``gevent.sleep`` until cancelled."""
    token = request.args["token"]
    started[token] = time.monotonic()
    try:
        yield Event(f"hello from {os.getpid()}")
        gevent.sleep(600)
        yield Event("unreachable")
    finally:
        finalized[token] = time.monotonic()


encodings: dict[str, str | None] = {}
"""The Accept-Encoding each ``/compressed`` request came with, by token."""


@app.get("/compressed")
@sse.stream(compress=["br", "gzip"], heartbeat=0.5)
def compressed() -> Iterator[dict[str, Any]]:
    """``n`` JSON events ``gap`` seconds apart, stamped with the wall clock (ms), then blocked."""
    return _compressed()


@app.get("/compressed-gzip")
@sse.stream(compress="gzip", heartbeat=0.5)
def compressed_gzip() -> Iterator[dict[str, Any]]:
    """As ``/compressed``, offering gzip only."""
    return _compressed()


def _compressed() -> Iterator[dict[str, Any]]:
    token = request.args["token"]
    encodings[token] = request.headers.get("Accept-Encoding")
    started[token] = time.monotonic()
    try:
        for i in range(int(request.args.get("n", 4))):
            gevent.sleep(float(request.args.get("gap", 0.4)))
            yield {"i": i, "made": time.time() * 1000, "words": "the same words again " * 20}
        gevent.sleep(600)
    finally:
        finalized[token] = time.monotonic()


@app.get("/finite")
@sse.stream
def finite() -> Response | Iterator[Event]:
    """Three events, then the end; a reconnect gets 204: the stream is over for good."""
    if request.headers.get("Last-Event-ID"):
        return Response(status=204)
    return iter([Event(str(n), id=f"f{n}") for n in (1, 2, 3)])


@app.get("/journal")
@sse.stream
def journal() -> Iterator[Event]:
    """Every line of the journal file after ``Last-Event-ID`` (a line number), then follow it.

    A stand-in for a durable store: another process appends to the file,
    and a reconnect, to this worker or its successor, replays from it.
    """
    assert JOURNAL is not None, "set BROWSER_TEST_JOURNAL"
    position = int(request.headers.get("Last-Event-ID") or 0)
    path = Path(JOURNAL)
    while True:
        lines = path.read_text().split("\n")[:-1]  # whole lines only
        for number in range(position + 1, len(lines) + 1):
            yield Event(lines[number - 1], id=str(number))
        position = max(position, len(lines))
        gevent.sleep(0.02)


# A second app, mounted at /limited, that lets one stream of the process open
# at a time (the limit counts every stream of the process): past it a stream
# is told to come back later.
limited = Flask("limited")
limited.config.update(SSE_HEARTBEAT_INTERVAL=5, SSE_RETRY=300, SSE_MAX_CONNECTIONS=1)
limited_sse = SSE(limited)
limited.register_blueprint(limited_sse.blueprint, url_prefix="/events")


@limited.post("/publish")
def limited_publish() -> dict[str, Any]:
    body: dict[str, Any] = request.get_json()
    return {"ids": [limited_sse.publish(body["data"], channel=body["channel"])]}


app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/limited": limited})  # type: ignore[method-assign]
