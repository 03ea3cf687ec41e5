"""The demo: a live clock streamed to the browser.

Run it with ``make run`` and open http://127.0.0.1:5000/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import gevent
from flask import Flask

from flask_sse_stream import SSE, Event

app = Flask(__name__)
sse = SSE(app)

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>flask-sse-stream demo</title>
<style>body { font: 16px system-ui, sans-serif; margin: 2rem; } #now { font-size: 3rem; }</style>
<h1>flask-sse-stream</h1>
<p>State: <b id="state">connecting</b> &middot; last event id: <code id="last">-</code></p>
<p id="now">&hellip;</p>
<script>
  const source = new EventSource("/clock");
  const state = document.getElementById("state");
  source.onopen = () => { state.textContent = "open"; };
  source.onerror = () => {
    state.textContent = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
  };
  source.addEventListener("tick", (e) => {
    const now = new Date(JSON.parse(e.data).now * 1000);
    document.getElementById("now").textContent = now.toLocaleTimeString();
    document.getElementById("last").textContent = e.lastEventId;
  });
</script>
"""


@app.get("/")
def index() -> str:
    return PAGE


@app.get("/clock")
@sse.stream
def clock() -> Iterator[Event]:
    n = 0
    while True:
        n += 1
        yield Event({"now": time.time()}, event="tick", id=str(n))
        gevent.sleep(1)
