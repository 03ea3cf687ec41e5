"""The demo: a live chat room over Server-Sent Events.

``make run`` serves it on http://127.0.0.1:5000/ with the in-process broker;
open the page in two windows and talk. With ``SSE_BROKER_URL`` set it runs
unchanged on Redis, under gunicorn with several workers::

    SSE_BROKER_URL=redis://localhost:6379/0 \\
        gunicorn -c python:flask_sse_stream.gunicorn_conf -w 4 examples.demo:app

The page shows the connection state, the last event id, how often it had
to reconnect, and every message exactly once, including the ones it missed
while it was away (the browser sends ``Last-Event-ID`` when it reconnects).
It also shows who is in the room (presence: the name is the stream's
identity) and says when someone joins or leaves; the operator page is at
http://127.0.0.1:5000/events/admin, for requests from this machine only.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, jsonify, request

from flask_sse_stream import SSE, InvalidEventError

app = Flask(__name__)
app.config.update(
    SSE_HEARTBEAT_INTERVAL=15,
    SSE_RETRY=2000,
    SSE_HISTORY_SIZE=500,
    # Who is in the room, and "joined"/"left" events on the chat channel.
    SSE_PRESENCE=["chat"],
    SSE_PRESENCE_GRACE=3,
    SSE_ADMIN=True,
)
if os.environ.get("SSE_BROKER_URL"):
    app.config["SSE_BROKER_URL"] = os.environ["SSE_BROKER_URL"]
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")

MAX_NAME = 40
MAX_TEXT = 500


@sse.identify
def who() -> Any:
    """The name the page passes (``?name=``); a real app takes its logged-in user."""
    name = request.args.get("name", "").strip()[:MAX_NAME]
    return {"name": name} if name else None


@sse.admin_check
def from_this_machine() -> bool:
    """The operator page, for this machine only; a real app checks its staff."""
    return request.remote_addr in ("127.0.0.1", "::1")


@app.get("/")
def index() -> Response:
    return app.send_static_file("demo.html")


@app.post("/messages")
def post_message() -> tuple[Response, int]:
    body: Any = request.get_json(silent=True) or {}
    name = str(body.get("name", "")).strip()[:MAX_NAME] or "anonymous"
    text = str(body.get("text", "")).strip()[:MAX_TEXT]
    if not text:
        return jsonify(error="write something first"), 400
    try:
        event_id = sse.publish({"name": name, "text": text}, channel="chat", event="message")
    except InvalidEventError as exc:  # e.g. a lone surrogate pasted in
        return jsonify(error=str(exc)), 400
    return jsonify(id=event_id), 201
