"""The app benchmarks/presence.py serves: the channels blueprint, presence on or off.

``BENCH_PRESENCE=1`` turns presence on (join/leave events on ``room:*``);
``?user=`` names a stream's identity. ``SSE_BROKER_URL`` from the environment.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, request

from flask_sse_stream import SSE

app = Flask(__name__)
app.config.update(
    SSE_HEARTBEAT_INTERVAL=None,
    SSE_RETRY=5000,
    SSE_BROKER_URL=os.environ["SSE_BROKER_URL"],
    SSE_PRESENCE=["room:*"] if os.environ.get("BENCH_PRESENCE") == "1" else False,
)
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")


@sse.identify
def _who() -> Any:
    user = request.args.get("user")
    return {"id": user} if user else None


@app.get("/health")
def health() -> dict[str, Any]:
    return {"pid": os.getpid()}
