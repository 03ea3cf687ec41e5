"""The app the pub/sub end-to-end tests serve: the channels blueprint and a
few views that publish the way the tests need (a numbered sequence, from a
greenlet or from a real OS thread).

Importing it has no side effect beyond building the app.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Iterator
from typing import Any

import gevent
import greenlet
from flask import Flask, Response, request
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from flask_sse_stream import SSE
from flask_sse_stream._stream import open_streams

app = Flask(__name__)
app.config.update(
    SSE_HEARTBEAT_INTERVAL=None,
    SSE_RETRY=500,
    SSE_HISTORY_SIZE=3000,
    SSE_QUEUE_SIZE=200,
    SSE_WRITE_TIMEOUT=2,
    SSE_MAX_CONNECTIONS=5000,
    SSE_SLOW_CONSUMER={"tick*": "conflate", "logs*": "drop-oldest"},
)
if os.environ.get("SSE_TEST_WRITE_TIMEOUT"):
    app.config["SSE_WRITE_TIMEOUT"] = float(os.environ["SSE_TEST_WRITE_TIMEOUT"])
if os.environ.get("SSE_TEST_BROKER_URL"):
    app.config["SSE_BROKER_URL"] = os.environ["SSE_TEST_BROKER_URL"]
    app.config["SSE_KEY_PREFIX"] = os.environ.get("SSE_KEY_PREFIX", "sse:")
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")


@app.after_request
def _tell_the_worker(response: Response) -> Response:
    response.headers["X-Worker"] = str(os.getpid())
    return response


# A second app, mounted at /limited, that refuses a third open stream in
# the process (the limit counts every stream of the process).
limited = Flask("limited")
limited.config.update(SSE_HEARTBEAT_INTERVAL=None, SSE_RETRY=3000, SSE_MAX_CONNECTIONS=2)
limited_sse = SSE(limited)
limited.register_blueprint(limited_sse.blueprint, url_prefix="/events")
app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/limited": limited})  # type: ignore[method-assign]


@sse.authorize
def _no_private(channel: str) -> bool:
    return not channel.startswith("private")


@app.get("/health")
def health() -> str:
    return "ok"


@app.get("/debug/state")
def state() -> dict[str, Any]:
    gc.collect()
    stats = sse.stats()
    return {
        **stats,
        "greenlets": sum(isinstance(o, greenlet.greenlet) for o in gc.get_objects()),
        "fds": len(os.listdir("/proc/self/fd")),
        "open_streams": len(open_streams()),
    }


def _publish_sequence(
    channel: str, count: int, start: int, pause: float, size: int, *, keys: int
) -> None:
    padding = "x" * size
    with app.app_context():
        for n in range(start, start + count):
            key = f"k{n % keys}" if keys else None
            sse.publish({"n": n, "pad": padding}, channel=channel, key=key)
            if pause:
                gevent.sleep(pause)
            elif n % 100 == 99:
                gevent.sleep(0)


@app.post("/publish-sequence")
def publish_sequence() -> dict[str, Any]:
    """Publish ``count`` events ``{"n": start..}`` to ``channel`` from a greenlet.

    With ``keys``, event ``n`` has the conflation key ``k<n % keys>``.
    """
    args = request.args
    worker = gevent.spawn(
        _publish_sequence,
        args["channel"],
        int(args.get("count", 1)),
        int(args.get("start", 0)),
        float(args.get("pause", 0)),
        int(args.get("size", 0)),
        keys=int(args.get("keys", 0)),
    )
    if args.get("wait"):
        worker.join()
    return {"started": True}


RECORD_DIR = os.environ.get("SSE_TEST_RECORD_DIR")


@app.get("/blocked")
@sse.stream
def blocked() -> Iterator[str]:
    """Say hello, then block; the ``finally`` leaves a file named by ``token``.

    A file, not memory: the tests read it after the worker process is gone.
    """
    token = request.args["token"]
    try:
        yield f"hello from {os.getpid()}"
        gevent.sleep(600)
        yield "never"
    finally:
        if RECORD_DIR is not None:
            with open(os.path.join(RECORD_DIR, f"{token}.final"), "w") as record:
                record.write(str(time.monotonic()))


@app.post("/publish-from-thread")
def publish_from_thread() -> dict[str, Any]:
    """Publish one event from a real OS thread of gevent's thread pool."""
    channel = request.args["channel"]

    def in_thread() -> str:
        with app.app_context():
            return sse.publish("from a thread", channel=channel)

    event_id = gevent.get_hub().threadpool.apply(in_thread)
    return {"id": event_id}
