"""Our app under benchmark: the shared producers behind ``@sse.stream``.

Served by ``python -m flask_sse_stream serve benchmarks.apps:app`` and by
``gunicorn -k gevent benchmarks.apps:app``, with the library's defaults
(15 s heartbeat, disconnect watching on).
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, request

from benchmarks import instrument
from flask_sse_stream import SSE

app = Flask(__name__)
sse = SSE(app)
instrument.instrument(app)


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
