"""The operator page: the hub's channels, subscribers and rates, live.

``SSE_ADMIN = True`` adds to the blueprint, behind ``@sse.admin_check``
(without one they answer 403, while ``SSE_ADMIN`` is off 404):

* ``GET <prefix>/admin``: the page;
* ``GET <prefix>/admin/stream``: an event stream of snapshots, one a second
  (the page reads it with ``EventSource``);
* ``GET <prefix>/admin/snapshot``: one snapshot, as JSON.

A snapshot has each worker's counters (:meth:`SSE.stats`), their total,
and per channel its subscribers, presence (members and connections, with
``SSE_PRESENCE``) and history size. With the Redis broker every worker
puts its counters in Redis once a second (gone three seconds after a
worker stops); the page computes publish and delivery rates from two
snapshots.
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import gevent
from flask import Blueprint, Flask, Response, current_app, jsonify

from ._broker import BrokerClosedError, BrokerUnavailableError, MemoryBroker
from ._event import Event
from ._views import error

if TYPE_CHECKING:
    from ._broker._presence_redis import RedisStore
    from ._extension import SSE

__all__ = ["add_admin_routes", "snapshot"]

PUT_EVERY: Final = 1.0
"""Seconds between two puts of a worker's counters in Redis."""
MAX_CHANNELS: Final = 200
"""Channels a snapshot details (the busiest)."""
_COUNTERS: Final = ("published", "delivered", "replayed", "resets", "dropped_slow", "queued")


def worker_stats(sse: SSE) -> dict[str, Any]:
    """This process's counters, for the page."""
    stats = sse.stats()
    return {
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "open_streams": stats["open_streams"],
        "subscribers": stats["subscribers"],
        **{name: stats[name] for name in _COUNTERS},
        "heartbeats": sum(stats["heartbeats"].values()),
        "time": time.time(),
    }


def _redis_store(sse: SSE) -> RedisStore | None:
    if sse.config.broker_url is None:
        return None
    from ._broker._presence_redis import RedisStore

    store = sse._state().tracker._store
    return store if isinstance(store, RedisStore) else None


def history_sizes(sse: SSE, channels: list[str]) -> dict[str, int]:
    """Events held for replay per channel (Redis: its stream's length)."""
    broker = sse.broker
    if isinstance(broker, MemoryBroker):
        with broker._lock:
            return {c: len(h.entries) for c in channels if (h := broker._histories.get(c))}
    prefix = sse.config.key_prefix
    replies = broker.execute([("XLEN", f"{prefix}stream:{c}") for c in channels])  # type: ignore[attr-defined]
    return {c: int(n) for c, n in zip(channels, replies, strict=True) if isinstance(n, int)}


def snapshot(sse: SSE) -> dict[str, Any]:
    """Every worker's counters, their total, and the busiest channels in detail."""
    mine = worker_stats(sse)
    workers = [mine]
    store = _redis_store(sse)
    if store is not None:
        store.put_stats(mine, 3 * PUT_EVERY)
        workers = sorted(store.worker_stats(), key=lambda w: str(w["worker"]))
    subscribers: Counter[str] = Counter()
    for worker in workers:
        subscribers.update(worker["subscribers"])
    total = {name: sum(int(w[name]) for w in workers) for name in (*_COUNTERS, "open_streams")}
    busiest = [c for c, _ in subscribers.most_common(MAX_CHANNELS)]
    histories = history_sizes(sse, busiest) if busiest else {}
    channels = []
    for name in sorted(busiest):
        row: dict[str, Any] = {
            "channel": name,
            "subscribers": subscribers[name],
            "history": histories.get(name, 0),
        }
        if sse.config.presence:
            presence = sse.presence(name)
            row["members"] = list(presence.members)
            row["connections"] = presence.connections
        channels.append(row)
    return {
        "time": time.time(),
        "presence": sse.config.presence,
        "workers": workers,
        "total": {**total, "subscribers": sum(subscribers.values()), "workers": len(workers)},
        "channels": channels,
    }


def _put_forever(app: Flask, sse: SSE) -> None:
    """Put this worker's counters in Redis once a second, for the other workers' pages."""
    while True:
        try:
            with app.app_context():
                store = _redis_store(sse)
                if store is not None:
                    store.put_stats(worker_stats(sse), 3 * PUT_EVERY)
        except (BrokerUnavailableError, BrokerClosedError):
            pass  # the page shows this worker again once Redis answers
        gevent.sleep(PUT_EVERY)


def add_admin_routes(blueprint: Blueprint, sse: SSE) -> None:
    """Add the operator page's routes to the blueprint."""
    putting: set[int] = set()

    def refusal() -> Response | None:
        if not sse.config.admin:
            return error(404, "the operator page is off (SSE_ADMIN)")
        if sse._admin_check is None:
            return error(403, "register a check with @sse.admin_check to open the operator page")
        if not sse._admin_check():
            return error(403, "not allowed to see the operator page")
        return None

    @blueprint.before_app_request
    def _start_putting() -> None:
        # Each worker, from its first request, so every worker is on the page.
        # The configuration first: os.getpid() is a system call, per request.
        if not sse.config.admin or sse.config.broker_url is None or os.getpid() in putting:
            return
        putting.add(os.getpid())
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        gevent.spawn(_put_forever, app, sse)

    @blueprint.get("/admin")
    def admin_page() -> Response:
        refused = refusal()
        if refused is not None:
            return refused
        page = resources.files("flask_sse_stream").joinpath("admin.html").read_text()
        response = current_app.response_class(page, content_type="text/html; charset=utf-8")
        response.headers["Cache-Control"] = "no-store"
        return response

    @blueprint.get("/admin/snapshot")
    def admin_snapshot() -> Response:
        refused = refusal()
        if refused is not None:
            return refused
        response = jsonify(snapshot(sse))
        response.headers["Cache-Control"] = "no-store"
        return response

    @blueprint.get("/admin/stream")
    def admin_stream() -> Response:
        refused = refusal()
        if refused is not None:
            return refused

        def snapshots() -> Iterator[Event]:
            while True:
                try:
                    yield Event(snapshot(sse), event="snapshot")
                except BrokerUnavailableError:
                    yield Event({"error": "the broker is unavailable"}, event="problem")
                gevent.sleep(PUT_EVERY)

        return sse.response(snapshots(), retry=2000)
