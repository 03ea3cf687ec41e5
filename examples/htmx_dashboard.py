"""htmx: a live dashboard of server-rendered fragments over Server-Sent Events.

``make run-htmx`` serves it on http://127.0.0.1:5000/. The page uses htmx and
its sse extension (``sse-connect`` / ``sse-swap``), served from
``examples/static/vendor`` (npm packages, ``make vendor``), and three sources
of HTML fragments, each a Jinja template rendered into an event's data:

* a greenlet of its own, outside any request, publishes a ``stats`` fragment
  every second to the ``dashboard`` channel (``render_fragment(..., app=app)``
  and ``sse.publish(..., app=app)``: no context to push by hand);
* posting a note publishes a multi-line ``note`` fragment from the view;
* ``/clock`` is a stream of its own whose generator renders a ``clock``
  fragment every second (``render_fragment`` inside a stream).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import gevent
from flask import Flask, Response, render_template, request

from flask_sse_stream import SSE, Event, render_fragment

app = Flask(__name__)
app.config.update(SSE_HEARTBEAT_INTERVAL=15, SSE_RETRY=2000)
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")

STARTED = time.time()
MAX_NOTE = 2000
_ticker_lock = threading.Lock()
_ticker: gevent.Greenlet[[], None] | None = None


def publish_stats() -> None:
    """Publish a stats fragment every second; runs in a greenlet, outside any context."""
    for tick in itertools.count(1):
        html = render_fragment(
            "htmx/stats.html", app=app, tick=tick, uptime=round(time.time() - STARTED)
        )
        sse.publish(html, channel="dashboard", event="stats", app=app)
        gevent.sleep(1)


@app.before_request
def start_ticker() -> None:
    # Started by the first request, in the serving process (not at import:
    # gunicorn may import the app before it forks its workers).
    global _ticker
    with _ticker_lock:
        if _ticker is None:
            _ticker = gevent.spawn(publish_stats)


@app.get("/")
def index() -> str:
    return render_template("htmx/index.html")


@app.post("/notes")
def post_note() -> Response:
    text = request.form.get("text", "").strip()[:MAX_NOTE]
    if not text:
        return Response("write something first", status=400)
    sse.publish(
        render_fragment("htmx/note.html", text=text, at=time.strftime("%H:%M:%S")),
        channel="dashboard",
        event="note",
    )
    return Response(status=204)


@app.get("/clock")
@sse.stream
def clock() -> Iterator[Event]:
    """This page's own stream: a fragment rendered in the stream, every second."""
    for n in itertools.count():
        yield Event(
            render_fragment("htmx/clock.html", now=time.strftime("%H:%M:%S"), n=n), event="clock"
        )
        gevent.sleep(1)
