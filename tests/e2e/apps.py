"""The app the end-to-end tests serve, each view showing one behaviour.

It runs in a server subprocess (our runner, gunicorn, ``flask run``) and
records what happened inside it (a producer's start and ``finally``, the
reason a stream closed, how many items a fast producer made) in plain dicts
keyed by the ``token`` query argument; ``/debug/state`` returns them with
the process's live greenlets, open file descriptors and open streams, so a
test can wait for the server to settle back to its baseline.

Timestamps are ``time.monotonic()``: on Linux the clock is shared by every
process, so a test can compare them with its own.

Importing it has no side effect beyond building the app: the server
processes patch themselves in their own entry points.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import gevent
import greenlet
from flask import Flask, request

from flask_sse_stream import SSE, CloseReason, Event, completion_chunks
from flask_sse_stream._stream import heartbeats, open_streams

app = Flask(__name__)
app.config.update(
    SSE_HEARTBEAT_INTERVAL=None,
    SSE_RETRY=1000,
    SSE_WRITE_TIMEOUT=1,
    SSE_BUFFER_SIZE=8,
)
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")

started: dict[str, float] = {}
finalized: dict[str, float] = {}
closed: dict[str, str] = {}
produced: dict[str, int] = {}

BLOCK = 600
"""Seconds a blocked producer sleeps: far longer than any test."""

INJECTIONS: dict[str, Any] = {
    "crlf-data": lambda: Event("hello\r\n\r\nevent: admin\r\ndata: pwned"),
    "lone-cr": lambda: Event("one\rtwo"),
    "crlf-event": lambda: Event("x", event="message\r\n\r\ndata: pwned"),
    "crlf-id": lambda: Event("x", id="1\r\n\r\ndata: pwned"),
}


def _token() -> str | None:
    return request.args.get("token")


def _mark(registry: dict[str, float]) -> None:
    token = _token()
    if token is not None:
        registry[token] = time.monotonic()


@sse.on_close
def _record_close(reason: CloseReason) -> None:
    token = _token()
    if token is not None:
        closed[token] = reason.value


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/debug/state")
def state() -> dict[str, Any]:
    gc.collect()
    with open("/proc/self/statm") as statm:
        rss_pages = int(statm.read().split()[1])
    return {
        "greenlets": sum(isinstance(o, greenlet.greenlet) for o in gc.get_objects()),
        "gc_frozen": gc.get_freeze_count(),
        "fds": len(os.listdir("/proc/self/fd")),
        "open_streams": len(open_streams()),
        "threads": threading.active_count(),
        "rss": rss_pages * os.sysconf("SC_PAGE_SIZE"),
        "started": started,
        "finalized": finalized,
        "closed": closed,
        "produced": produced,
        "heartbeats": dict(heartbeats),
    }


@app.get("/blocked")
@sse.stream
def blocked() -> Iterator[Event]:
    """Never yields: blocked in ``gevent.sleep`` until cancelled."""
    _mark(started)
    try:
        gevent.sleep(BLOCK)
        yield Event("unreachable")
    finally:
        _mark(finalized)


@app.get("/quiet")
@sse.stream(heartbeat=0.5)
def quiet() -> Iterator[Event]:
    """Blocked like ``/blocked``, with a short heartbeat."""
    _mark(started)
    try:
        gevent.sleep(BLOCK)
        yield Event("unreachable")
    finally:
        _mark(finalized)


@app.get("/ticks")
@sse.stream(heartbeat=0.2)
def ticks() -> Iterator[Event]:
    """``n`` multi-line events, ``gap`` seconds apart, on a short heartbeat."""
    n = request.args.get("n", 10, type=int)
    gap = request.args.get("gap", 0.07, type=float)
    for i in range(n):
        gevent.sleep(gap)
        yield Event(f"tick {i}\nsecond line\n", event="tick", id=str(i))


@app.get("/finite")
@sse.stream
def finite() -> Iterator[Event]:
    """``n`` events, ``gap`` seconds apart (0: as fast as possible), then the end."""
    n = request.args.get("n", 3, type=int)
    gap = request.args.get("gap", 0.0, type=float)
    for i in range(n):
        if gap:
            gevent.sleep(gap)
        yield Event(f"event {i}", event="count", id=str(i))


@app.get("/fast")
@sse.stream
def fast() -> Iterator[str]:
    """Up to ``n`` events of ``size`` bytes, never waiting: only back-pressure stops it."""
    n = request.args.get("n", 100_000, type=int)
    payload = "x" * request.args.get("size", 1024, type=int)
    count = 0
    try:
        for _ in range(n):
            yield payload
            count += 1
    finally:
        token = _token()
        if token is not None:
            produced[token] = count
        _mark(finalized)


@app.get("/burst")
@sse.stream
def burst() -> Iterator[Event]:
    """``n`` events at once, then blocked like ``/blocked``."""
    _mark(started)
    try:
        for i in range(request.args.get("n", 3, type=int)):
            yield Event(f"burst {i}", id=str(i))
        gevent.sleep(BLOCK)
    finally:
        _mark(finalized)


@app.get("/big")
@sse.stream
def big() -> Iterator[str]:
    """One event of ``size`` bytes, then blocked like ``/blocked``."""
    _mark(started)
    try:
        yield "x" * request.args.get("size", 4 << 20, type=int)
        gevent.sleep(BLOCK)
    finally:
        _mark(finalized)


@app.get("/inject/<case>")
@sse.stream
def inject(case: str) -> Iterator[Event]:
    """An event before and after one built from hostile text."""
    yield Event("before")
    yield INJECTIONS[case]()
    yield Event("after")


@app.get("/raises")
@sse.stream
def raises() -> Iterator[Event]:
    yield Event("first")
    raise RuntimeError("secret-internal-detail")


@app.post("/tokens")
@sse.stream(retry=None)
def tokens() -> Iterator[object]:
    """An LLM-style POST stream: ``n`` tokens of a fake model, ``gap`` seconds apart.

    A generator, so it reads its JSON body once the stream has started;
    the body may carry ``padding`` (ignored) to make it large.
    """
    body = request.get_json()
    n, gap = int(body.get("n", 5)), float(body.get("gap", 0.01))

    def model() -> Iterator[str]:
        _mark(started)
        try:
            for i in range(n):
                yield f"tok{i} "
                gevent.sleep(gap)
        finally:
            _mark(finalized)

    yield from completion_chunks(model(), model="fake")


COMPRESS = ["br", "gzip"]
"""What the compressed views offer: the client's Accept-Encoding picks."""


@app.get("/compressed")
@sse.stream(heartbeat=0.3, compress=COMPRESS)
def compressed() -> Iterator[dict[str, Any]]:
    """``n`` JSON events ``gap`` seconds apart, each stamped when made, then blocked."""
    _mark(started)
    try:
        for i in range(request.args.get("n", 3, type=int)):
            if i:
                gevent.sleep(request.args.get("gap", 0.2, type=float))
            yield {"i": i, "made": time.monotonic(), "words": "the same words again " * 20}
        gevent.sleep(BLOCK)
    finally:
        _mark(finalized)


@app.get("/compressed-channel/<channel>")
@sse.stream(heartbeat=0.3, compress=COMPRESS)
def compressed_channel(channel: str) -> Any:
    """A subscription, served by the handler (its sink writes beside it where it may)."""
    return sse.subscribe([channel], last_id=None)


@app.post("/publish/<channel>")
def publish(channel: str) -> dict[str, int]:
    """Publish ``n`` stamped events, ``gap`` seconds apart, from a greenlet; returns at once."""
    count = request.args.get("n", 3, type=int)
    gap = request.args.get("gap", 0.2, type=float)

    def run() -> None:
        with app.app_context():
            for i in range(count):
                if i:
                    gevent.sleep(gap)
                sse.publish(
                    {"i": i, "made": time.monotonic(), "words": "the same words again " * 20},
                    channel=channel,
                )

    gevent.spawn(run)
    return {"subscribers": sse.broker.stats().subscribers.get(channel, 0)}


class _MarkChunks:
    """A middleware that changes the body of ``/marked/...``: a comment after each chunk.

    The server then writes other bytes than the stream returned, so the
    stream must not write beside it (see ``flask_sse_stream._transport``).
    """

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ["PATH_INFO"]
        if not path.startswith("/marked/"):
            return self.wsgi_app(environ, start_response)
        environ["PATH_INFO"] = path.removeprefix("/marked")
        return self._marked(self.wsgi_app(environ, start_response))

    @staticmethod
    def _marked(body: Any) -> Iterator[bytes]:
        try:
            for chunk in body:
                yield chunk + b": marked\n"
        finally:
            body.close()


app.wsgi_app = _MarkChunks(app.wsgi_app)  # type: ignore[method-assign]
