"""Datastar: a shared counter driven by datastar-py's events.

``make run-datastar`` serves it on http://127.0.0.1:5000/. Pressing the
button POSTs the page's signals (Datastar sends them as a JSON body); the
view reads them with :func:`flask_sse_stream.datastar.read_signals` and
answers with a stream of datastar-py events: a ``datastar-patch-signals``
for the page that asked, and a ``datastar-patch-elements`` it also
publishes to the ``datastar`` channel, which every open page streams with
``@get('/events?channel=datastar')``.

The page loads the Datastar client from ``/static/vendor/datastar/datastar.js``.
Datastar 1.0 is not published on npm (the npm package stops at
1.0.0-beta.11, which speaks the older ``datastar-merge-fragments`` events),
so that file is not vendored here: download ``datastar.js`` of the Datastar
1.0 release you use and put it there (``docs/guide/datastar.md``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path

from datastar_py import ServerSentEventGenerator as DS
from datastar_py.consts import ElementPatchMode
from flask import Flask, render_template
from markupsafe import escape

from flask_sse_stream import SSE
from flask_sse_stream.datastar import read_signals

app = Flask(__name__)
app.config.update(SSE_HEARTBEAT_INTERVAL=15)
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")

CLIENT = Path(app.static_folder or "") / "vendor" / "datastar" / "datastar.js"
_total = itertools.count(1)
_lock = threading.Lock()


@app.get("/")
def index() -> str:
    return render_template("datastar/index.html", client=CLIENT.is_file())


@app.post("/increment")
@sse.stream(retry=None)
def increment() -> Iterator[str]:
    signals = read_signals() or {}
    mine = int(signals.get("mine", 0)) + 1
    name = str(signals.get("name", "")).strip()[:40] or "someone"
    with _lock:
        total = next(_total)
    yield DS.patch_signals({"mine": mine})
    sse.publish(
        DS.patch_elements(
            f'<li data-testid="press">{escape(name)} pressed: {total}</li>',
            selector="#presses",
            mode=ElementPatchMode.PREPEND,
        ),
        channel="datastar",
    )
    sse.publish(DS.patch_signals({"total": total}), channel="datastar")
