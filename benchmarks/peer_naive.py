"""The naive peer: a Flask generator view framed by hand, on ``gunicorn -k gevent``.

What most Flask SSE code in the wild looks like: ``stream_with_context``
around a generator that formats ``data:`` lines itself, one
``gevent.queue.Queue`` per subscriber, no disconnect watching (a closed
client is noticed at a failed write). ``app`` sends no heartbeat;
``timer_app`` sends one per stream after 15 s of silence, timed by a
timeout on the subscriber's queue (the per-stream timer design).
``/events`` is its pub/sub: ``/bench/publish`` puts each event into every
subscriber's queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from flask import Flask, Response, request, stream_with_context

from benchmarks import instrument

HEARTBEAT_INTERVAL = 15.0


def _frame(items: Iterable[object]) -> Iterator[str]:
    for item in items:
        yield ":\n\n" if item is instrument.HEARTBEAT else f"data: {item}\n\n"


def _response(items: Iterable[object]) -> Response:
    return Response(
        stream_with_context(_frame(items)),
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _make_app(heartbeat: float | None) -> Flask:
    app = Flask(__name__)
    instrument.instrument(app)

    @app.get("/blocked")
    def blocked() -> Response:
        return _response(instrument.blocked(float(request.args.get("seconds", "10"))))

    @app.get("/held")
    def held() -> Response:
        args = request.args
        return _response(instrument.held(args["id"], float(args.get("period", "30"))))

    @app.get("/idle")
    def idle() -> Response:
        return _response(instrument.idle(heartbeat))

    @app.get("/events")
    def events() -> Response:
        return _response(instrument.subscriber(probe=False, heartbeat=heartbeat))

    @app.get("/burst")
    def burst() -> Response:
        return _response(instrument.burst())

    return app


app = _make_app(None)
timer_app = _make_app(HEARTBEAT_INTERVAL)
