"""What every Flask app under benchmark shares: the producers and the probes.

The producers are plain generators of ``str`` data, so the same code runs
behind our ``@sse.stream`` and behind a peer's hand-written framing; only
the serving differs. A producer may also yield :data:`HEARTBEAT` (the peer
with a per-stream timer does), which each app frames as a comment.

The probe endpoints let the load client read what only the server knows:

* ``GET /pid``: the process that serves requests (gunicorn's worker, not
  its master), whose RSS and CPU time the client reads from ``/proc``, and
  where it imported our library from (``null`` in a peer's environment);
* ``GET /finals?prefix=P``: when each ``/held`` producer whose id starts
  with ``P`` ran its ``finally`` (``time.time()``, same clock as the client);
* ``POST /bench/publish?count=N&interval=S``: publishes ``N`` stamped events
  (:func:`payload.stamped`, with ``&tag=T``) through the app's own pub/sub: at once, inside the
  request, when ``S`` is 0; else from a background greenlet on a fixed
  schedule, one every ``S`` seconds (an open-loop publisher);
* ``GET /bench/subscribers``: how many fan-out subscribers are registered;
* ``GET /bench/memory``: where the process's memory sits (:func:`memory`).

Nothing here patches anything: the server's entry point has done that.
This module runs in the project's venv and in the peers' (benchmarks/.venv),
so it imports nothing of ours at module level.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import gevent
from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue
from gevent.queue import Empty, Queue

from benchmarks import payload

__all__ = [
    "HEARTBEAT",
    "blocked",
    "burst",
    "held",
    "idle",
    "instrument",
    "stamped",
    "subscriber",
]

HEARTBEAT = object()
"""Yielded by a producer that times its own heartbeat; framed as a comment."""

FINALS: dict[str, float] = {}
SUBSCRIBERS: set[Queue[str]] = set()


def stamped(tag: str = "x") -> str:
    """One fan-out event's data; see :func:`payload.stamped`."""
    return payload.stamped(tag)


def burst() -> Iterator[str]:
    """S3: ~50-byte events as fast as the stream takes them, numbered."""
    return payload.burst()


def blocked(seconds: float) -> Iterator[str]:
    """S5: block ``seconds`` before the first event, then idle."""
    gevent.sleep(seconds)
    yield "late"
    gevent.sleep(3600)


def held(stream_id: str, period: float) -> Iterator[str]:
    """S4: one probe event, then an event every ``period`` seconds.

    The ``finally`` records when the stream was cleaned up.
    """
    try:
        yield "probe"
        while True:
            gevent.sleep(period)
            yield "tick"
    finally:
        FINALS[stream_id] = time.time()


def idle(heartbeat: float | None = None) -> Iterator[object]:
    """S1: a subscriber: one probe event, then whatever is published.

    With ``heartbeat`` the producer times its own silence with a timeout on
    its queue (the per-stream timer design) and yields :data:`HEARTBEAT`.
    """
    return subscriber(probe=True, heartbeat=heartbeat)


def subscriber(*, probe: bool, heartbeat: float | None = None) -> Iterator[object]:
    """A hand-made subscriber: a ``gevent.queue.Queue`` in :data:`SUBSCRIBERS`."""
    queue: Queue[str] = Queue()
    SUBSCRIBERS.add(queue)
    try:
        if probe:
            yield "probe"
        while True:
            if heartbeat is None:
                yield queue.get()
                continue
            try:
                yield queue.get(timeout=heartbeat)
            except Empty:
                yield HEARTBEAT
    finally:
        SUBSCRIBERS.discard(queue)


def publish_to_queues(data: str) -> None:
    """The naive fan-out: put the data into every subscriber's queue."""
    for queue in tuple(SUBSCRIBERS):
        queue.put_nowait(data)


def _pid() -> ResponseReturnValue:
    try:
        import flask_sse_stream
    except ImportError:  # a peer's environment
        library = None
    else:
        library = os.path.dirname(flask_sse_stream.__file__)
    return jsonify(pid=os.getpid(), library=library)


def _finals() -> ResponseReturnValue:
    prefix = request.args.get("prefix", "")
    return jsonify({key: value for key, value in FINALS.items() if key.startswith(prefix)})


_snapshots: dict[str, object] = {}


def _tracemalloc() -> ResponseReturnValue:
    """``?take=NAME`` stores a snapshot; ``?diff=A,B&group=lineno|traceback&top=N`` compares.

    Only with tracemalloc on (``PYTHONTRACEMALLOC=25`` in the server's
    environment, as ``benchmarks/profile.py mem`` starts it).
    """
    import gc
    import tracemalloc

    if not tracemalloc.is_tracing():
        return jsonify(error="start the server with PYTHONTRACEMALLOC=25"), 409
    if "take" in request.args:
        gc.collect()
        _snapshots[request.args["take"]] = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        return jsonify(taken=request.args["take"])
    first, second = request.args["diff"].split(",")
    group = request.args.get("group", "lineno")
    top = int(request.args.get("top", "25"))
    old, new = _snapshots[first], _snapshots[second]
    stats = new.compare_to(old, group)  # type: ignore[attr-defined]
    out = []
    for stat in stats[:top]:
        frames = [f"{frame.filename}:{frame.lineno}" for frame in stat.traceback]
        out.append({"size_diff": stat.size_diff, "count_diff": stat.count_diff, "where": frames})
    return jsonify(total=sum(s.size_diff for s in stats), top=out)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


_PYMALLOC = {
    "pymalloc_arenas": r"# arenas allocated current\s*=\s*([\d,]+)",
    "pymalloc_allocated": r"# bytes in allocated blocks\s*=\s*([\d,]+)",
    "pymalloc_available": r"# bytes in available blocks\s*=\s*([\d,]+)",
    "pymalloc_unused_pools": r"unused pools \* \d+ bytes\s*=\s*([\d,]+)",
    "pymalloc_pool_headers": r"# bytes lost to pool headers\s*=\s*([\d,]+)",
    "pymalloc_quantization": r"# bytes lost to quantization\s*=\s*([\d,]+)",
}


def memory() -> dict[str, int]:
    """Where this process's memory sits, in bytes.

    ``smaps_*``: ``/proc/self/smaps_rollup`` (``smaps_Rss`` is what S1
    counts); ``malloc_*``: glibc's ``mallinfo2()`` (``arena``: the heap
    from ``brk``; ``hblkhd``: blocks mmapped one each; ``uordblks``: in
    use; ``fordblks``: free in the heap); ``pymalloc_*``: CPython's small
    object allocator, from ``sys._debugmallocstats()`` (documented in
    ``sys``; it prints to the C stderr, read back from a file): its 1 MiB
    arenas are mmapped, so they are in neither ``malloc_*`` figure. What
    is in none of them (RSS minus the touched heap and arenas) is the
    other mmaps: CPython's interpreter data stacks (a 16 KiB chunk per
    greenlet that ran Python code) and the libraries'.
    """
    out: dict[str, int] = {}
    with open("/proc/self/smaps_rollup") as rollup:
        for line in rollup:
            found = re.match(r"(\w+):\s+(\d+) kB", line)
            if found:
                out["smaps_" + found.group(1)] = int(found.group(2)) * 1024
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    for name, _ in _MallInfo2._fields_:
        out["malloc_" + name] = getattr(info, name)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as stats:
        os.dup2(stats.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        stats.seek(0)
        text = stats.read()
    for key, pattern in _PYMALLOC.items():
        found = re.search(pattern, text)
        if found:
            out[key] = int(found.group(1).replace(",", ""))
    with open("/proc/self/maps") as maps:
        out["mappings"] = sum(1 for _ in maps)
    return out


def _memory() -> ResponseReturnValue:
    return jsonify(memory())


def instrument(
    app: Flask,
    publish: Callable[[str], object] = publish_to_queues,
    subscribers: Callable[[], int] = lambda: len(SUBSCRIBERS),
) -> None:
    """Add the probe endpoints to ``app``; ``publish`` is its fan-out."""

    def bench_publish() -> ResponseReturnValue:
        count = int(request.args.get("count", "1"))
        interval = float(request.args.get("interval", "0"))
        tag = request.args.get("tag", "x")
        if not interval:
            for _ in range(count):
                publish(stamped(tag))
            return jsonify(published=count)

        def steady() -> None:
            # Open loop: the schedule never waits for a delivery.
            with app.app_context():
                start = time.monotonic()
                for number in range(count):
                    delay = start + number * interval - time.monotonic()
                    if delay > 0:
                        gevent.sleep(delay)
                    publish(stamped(tag))

        gevent.spawn(steady)
        return jsonify(published=0, scheduled=count)

    def bench_subscribers() -> ResponseReturnValue:
        return jsonify(subscribers=subscribers())

    probes = Blueprint("bench_probes", __name__)
    probes.add_url_rule("/pid", view_func=_pid)
    probes.add_url_rule("/finals", view_func=_finals)
    probes.add_url_rule("/bench/publish", view_func=bench_publish, methods=["POST"])
    probes.add_url_rule("/bench/subscribers", view_func=bench_subscribers)
    probes.add_url_rule("/bench/tracemalloc", view_func=_tracemalloc)
    probes.add_url_rule("/bench/memory", view_func=_memory)
    app.register_blueprint(probes)
