"""LLM-style token streaming: a POST answered by an event stream, read with fetch().

``make run-llm`` serves it on http://127.0.0.1:5000/. The page POSTs a chat
request in the OpenAI format and reads the answer as it is made (``fetch``,
a ``ReadableStream`` and the ``eventsource-parser`` npm package, served from
``examples/static/vendor``): ``data: {...}`` chunks, then ``data: [DONE]``.
A fake model stands in for the real call: it yields a token every
``delay`` seconds (no network).

Press Stop and the page aborts its fetch; the server sees the connection
close and stops the model at once, wherever it waits: its ``finally`` runs
and marks the run ``cancelled``, which the page then shows (from
``GET /runs/<id>``).
"""

from __future__ import annotations

import collections
import time
import uuid
from collections.abc import Iterator
from typing import Any

import gevent
from flask import Flask, Response, abort, jsonify, request

from flask_sse_stream import SSE, completion_chunks

app = Flask(__name__)
app.config.update(SSE_HEARTBEAT_INTERVAL=15)
sse = SSE(app)

runs: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
"""How each model call went, by completion id (the last 100): what the page
shows after Stop, and what the tests read. Times are ``time.monotonic()``."""
MAX_RUNS = 100


def fake_model(prompt: str, run: dict[str, Any], delay: float) -> Iterator[str]:
    """Stand in for a model client's stream: one token every ``delay`` seconds."""
    words = (
        f"You asked: {prompt!r}. Here is a long answer, one token at a time, so that "
        "there is time to press Stop: " + "lorem ipsum dolor sit amet " * 12
    ).split()
    try:
        for word in words:
            gevent.sleep(delay)  # the model thinking: where Stop finds it
            run["tokens"] += 1
            yield word + " "
        run["state"] = "finished"
    finally:
        if run["state"] == "running":
            run["state"] = "cancelled"  # the client left: this is the model call's cleanup
        run["ended"] = time.monotonic()


@app.get("/")
def index() -> Response:
    return app.send_static_file("llm.html")


@app.post("/v1/chat/completions")
@sse.stream(retry=None)
def completions() -> Iterator[dict[str, Any] | str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        abort(400, "send a JSON body with a list of messages")
    prompt = str((body["messages"] or [{}])[-1].get("content", ""))[:500]
    delay = min(max(float(body.get("delay", 0.08)), 0.0), 2.0)
    run_id = f"chatcmpl-{uuid.uuid4().hex}"  # the completion's id names the run
    run = runs[run_id] = {"id": run_id, "state": "running", "tokens": 0, "ended": None}
    while len(runs) > MAX_RUNS:
        runs.popitem(last=False)
    model = str(body.get("model", "fake-1"))
    return completion_chunks(fake_model(prompt, run, delay), model=model, id=run_id)


@app.get("/runs/<run_id>")
def show_run(run_id: str) -> Response:
    run = runs.get(run_id)
    if run is None:
        abort(404)
    return jsonify(run)
