"""The app the presence end-to-end tests serve (gunicorn -w 2 on Redis).

``?user=NAME`` names a stream's identity; ``private*`` channels are refused.
``SSE_TEST_BROKER_URL``, ``SSE_KEY_PREFIX``, ``SSE_PRESENCE_GRACE`` and
``SSE_PRESENCE_TTL`` come from the environment. Every response says which
worker answered (``X-Worker``).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, Response, request

from flask_sse_stream import SSE

app = Flask(__name__)
app.config.update(
    SSE_HEARTBEAT_INTERVAL=None,
    SSE_RETRY=500,
    SSE_PRESENCE=["room:*"],
    SSE_PRESENCE_GRACE=float(os.environ.get("SSE_PRESENCE_GRACE", "1")),
    SSE_PRESENCE_TTL=float(os.environ.get("SSE_PRESENCE_TTL", "2")),
    SSE_ADMIN=True,
)
if os.environ.get("SSE_TEST_BROKER_URL"):
    app.config["SSE_BROKER_URL"] = os.environ["SSE_TEST_BROKER_URL"]
    app.config["SSE_KEY_PREFIX"] = os.environ.get("SSE_KEY_PREFIX", "sse:")
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")


@sse.authorize
def _no_private(channel: str) -> bool:
    return not channel.startswith("private")


@sse.identify
def _who() -> Any:
    name = request.args.get("user")
    return {"name": name} if name else None


@sse.admin_check
def _local_only() -> bool:
    return request.remote_addr == "127.0.0.1"


@app.after_request
def _tell_the_worker(response: Response) -> Response:
    response.headers["X-Worker"] = str(os.getpid())
    return response


@app.get("/health")
def health() -> str:
    return "ok"


@app.post("/publish")
def publish() -> dict[str, Any]:
    return {"id": sse.publish(request.args["text"], channel=request.args["channel"])}
