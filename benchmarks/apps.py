"""Our app under benchmark: the shared producers behind ``@sse.stream``.

Served by ``python -m flask_sse_stream serve benchmarks.apps:app`` and by
``gunicorn -k gevent benchmarks.apps:app``, with the library's defaults
(15 s heartbeat, disconnect watching on). The fan-out scenario uses the
channels blueprint at ``/events`` and ``sse.publish``; with
``SSE_BROKER_URL`` in the environment the app passes it on to the library
(the Redis broker).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from flask import Flask, request

from benchmarks import instrument
from flask_sse_stream import SSE

CHANNEL = "bench"

app = Flask(__name__)
if os.environ.get("SSE_BROKER_URL"):
    app.config["SSE_BROKER_URL"] = os.environ["SSE_BROKER_URL"]
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")


def _publish(data: str) -> None:
    sse.publish(data, channel=CHANNEL)


def _subscribers() -> int:
    return int(sse.stats()["subscribers"].get(CHANNEL, 0))


instrument.instrument(app, _publish, _subscribers)


@app.get("/blocked")
@sse.stream
def blocked() -> Iterator[str]:
    return instrument.blocked(float(request.args.get("seconds", "10")))


@app.get("/held")
@sse.stream
def held() -> Iterator[str]:
    args = request.args
    return instrument.held(args["id"], float(args.get("period", "30")))


@app.get("/idle")
@sse.stream
def idle() -> Iterator[object]:
    return instrument.idle()


@app.get("/burst")
@sse.stream
def burst() -> Iterator[str]:
    return instrument.burst()
