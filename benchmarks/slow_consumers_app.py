"""The app :mod:`slow_consumers` serves: a ticker channel and a publisher it can start.

Configured by the environment: ``BENCH_POLICY`` (the ``SSE_SLOW_CONSUMER`` of the
``ticker`` channel, default ``conflate``) and ``BENCH_QUEUE_SIZE``
(``SSE_QUEUE_SIZE``, default 100: one conflation window of 100 keys).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import gevent
from flask import Flask, request

from flask_sse_stream import SSE

app = Flask(__name__)
app.config.update(
    SSE_HEARTBEAT_INTERVAL=None,
    SSE_RETRY=None,
    SSE_QUEUE_SIZE=int(os.environ.get("BENCH_QUEUE_SIZE", "100")),
    SSE_SLOW_CONSUMER={"ticker": os.environ.get("BENCH_POLICY", "conflate")},
)
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")

_run: dict[str, Any] = {}


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _ticker(rate: int, keys: int, seconds: float, tick: float) -> None:
    """Publish ``rate`` events a second over ``keys`` keys, in bursts every ``tick`` seconds.

    A burst is published without yielding: the subscribers' writes follow it,
    one per subscriber and burst.
    """
    costs: list[float] = []
    rss: list[tuple[float, int]] = []
    _run.update(costs=costs, rss=rss, published=0, done=False)
    per_tick = max(1, round(rate * tick))
    start = time.monotonic()
    n = 0
    with app.app_context():
        while (now := time.monotonic()) - start < seconds:
            for _ in range(per_tick):
                data = f'{{"k":{n % keys},"n":{n},"t":{time.time():.6f}}}'
                began = time.perf_counter()
                sse.publish(data, channel="ticker", key=f"k{n % keys}")
                costs.append(time.perf_counter() - began)
                n += 1
            _run["published"] = n
            if not rss or now - rss[-1][0] - start >= 0.5:
                rss.append((now - start, _rss_kib()))
            gevent.sleep(max(0.0, start + n / rate - time.monotonic()))
    _run["done"] = True


@app.get("/health")
def health() -> dict[str, Any]:
    return {"ok": True}


@app.post("/ticker")
def start_ticker() -> dict[str, Any]:
    args = request.args
    gevent.spawn(
        _ticker,
        int(args["rate"]),
        int(args["keys"]),
        float(args["seconds"]),
        float(args.get("tick", 0.01)),
    )
    return {"started": True}


@app.get("/ticker")
def ticker_result() -> dict[str, Any]:
    costs = sorted(_run.get("costs", ()))
    result: dict[str, Any] = {
        "done": _run.get("done", False),
        "published": _run.get("published", 0),
        "rss_kib": _run.get("rss", []),
        "stats": sse.stats(),
    }
    if costs:
        result["publish_us"] = {
            "mean": 1e6 * statistics.fmean(costs),
            "p50": 1e6 * costs[len(costs) // 2],
            "p99": 1e6 * costs[int(len(costs) * 0.99)],
        }
    return result
