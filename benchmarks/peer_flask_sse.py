"""The flask-sse peer: Redis pub/sub per stream, on ``gunicorn -k gevent``.

Runs in the benchmark environment (``benchmarks/.venv``) with ``REDIS_URL``
set to a redis-server of its own. flask-sse streams only what is published
to a Redis channel, so every scenario drives it by publishing:

* ``/stream?channel=bench`` is flask-sse's own view (the fan-out);
* ``/idle``, ``/held``, ``/blocked`` and ``/burst`` each subscribe their
  stream to a channel of its own, built exactly as flask-sse's view does
  (``stream_with_context`` over ``sse.messages(channel)``), and a greenlet
  publishes to it with ``sse.publish`` once Redis counts the subscriber:
  the probe event, the 30 s ticks, the late event, or events as fast as
  ``sse.publish`` goes;
* a ``finally`` around the stream's generator records when it was cleaned
  up (S4).

flask-sse sends no heartbeat and does not watch for disconnects.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import gevent
import redis
from flask import Flask, Response, current_app, request, stream_with_context
from flask_sse import sse

from benchmarks import instrument, payload

CHANNEL = "bench"

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ["REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")

# The instrumentation's own client (flask-sse builds a new one per call).
_probe = redis.Redis.from_url(os.environ["REDIS_URL"])


def _subscribers(channel: str) -> int:
    return int(_probe.pubsub_numsub(channel)[0][1])


def _publish(data: str, channel: str = CHANNEL) -> None:
    sse.publish(data, channel=channel)


instrument.instrument(app, _publish, lambda: _subscribers(CHANNEL))


def _stream(channel: str, on_end: Callable[[], None] | None = None) -> Response:
    @stream_with_context
    def generator() -> Iterator[str]:
        try:
            for message in sse.messages(channel=channel):
                yield str(message)
        finally:
            if on_end is not None:
                on_end()

    return current_app.response_class(generator(), mimetype="text/event-stream")


def _once_subscribed(channel: str, then: Callable[[], None]) -> None:
    def run() -> None:
        deadline = time.monotonic() + 60
        while not _subscribers(channel):
            if time.monotonic() > deadline:
                return
            gevent.sleep(0.005)
        with app.app_context():
            then()

    gevent.spawn(run)


@app.get("/idle")
def idle() -> Response:
    channel = f"idle-{uuid.uuid4().hex}"
    _once_subscribed(channel, lambda: _publish("probe", channel))
    return _stream(channel)


@app.get("/held")
def held() -> Response:
    stream_id = request.args["id"]
    period = float(request.args.get("period", "30"))
    channel = f"held-{stream_id}"

    def ticks() -> None:
        _publish("probe", channel)
        for _ in range(10):
            gevent.sleep(period)
            if stream_id in instrument.FINALS:
                return
            _publish("tick", channel)

    def cleaned_up() -> None:
        instrument.FINALS[stream_id] = time.time()

    _once_subscribed(channel, ticks)
    return _stream(channel, cleaned_up)


@app.get("/blocked")
def blocked() -> Response:
    seconds = float(request.args.get("seconds", "10"))
    channel = f"blocked-{uuid.uuid4().hex}"

    def late() -> None:
        gevent.sleep(seconds)
        _publish("late", channel)

    _once_subscribed(channel, late)
    return _stream(channel)


@app.get("/burst")
def burst() -> Response:
    channel = f"burst-{uuid.uuid4().hex}"

    def flood() -> None:
        deadline = time.monotonic() + 30
        for number, data in enumerate(payload.burst()):
            if number % 1000 == 0 and (time.monotonic() > deadline or not _subscribers(channel)):
                return
            _publish(data, channel)

    _once_subscribed(channel, flood)
    return _stream(channel)
