"""The heartbeat design, measured in one process without sockets.

Two ways to beat idle streams, each stream being what the server holds: a
bounded buffer and a handler greenlet blocked on it (as in
:class:`flask_sse_stream.stream.EventStream`):

* ``shared``: the library's own loop (:mod:`flask_sse_stream.heartbeat`),
  one greenlet per interval that wakes three times per interval, compares
  every stream's ``last_write`` and queues a comment on those due; the
  handler stamps ``last_write`` on every chunk it takes;
* ``timer``: no loop; each handler waits with ``get(timeout=interval)``
  and sends the comment when it times out (what a hand-written generator
  with a per-subscriber queue does).

Figures, per stream count (the process's CPU time, ``time.process_time``):

* ``idle``: CPU per interval with every stream idle, the streams' phases
  spread at random, over several intervals; per stream and per wake-up;
* ``scan``: the shared loop's wake-ups when no stream is due (the pure
  cost of the scan), per stream per wake-up;
* ``hot``: CPU per event handed to a waiting handler, the timer design
  arming and cancelling a timer on each.

The interval is short (CPU per interval does not depend on its length);
:mod:`core` scales the idle figure to the real 15 s interval.

Run: ``python benchmarks/heartbeat_bench.py '{"design": "shared", "streams": 1000}'``.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from typing import Any

import gevent
from gevent.queue import Empty, Full, Queue

try:
    from flask_sse_stream import _heartbeat as heartbeat
except ImportError:  # a commit from before the internal modules became private
    from flask_sse_stream import heartbeat  # type: ignore[no-redef]

COMMENT = b":\n"
BUFFER_SIZE = 64


class Stream:
    """The part of an event stream the heartbeat touches."""

    __slots__ = ("beats", "buffer", "events", "last_write")

    def __init__(self) -> None:
        self.buffer: Queue[bytes] = Queue(BUFFER_SIZE)
        self.last_write = time.monotonic()
        self.beats = 0
        self.events = 0

    def beat(self) -> None:
        # What EventStream.beat does, counted.
        try:
            self.buffer.put_nowait(COMMENT)
        except Full:
            return
        self.beats += 1

    def serve_shared(self) -> None:
        get = self.buffer.get
        monotonic = time.monotonic
        while True:
            get()
            self.last_write = monotonic()
            self.events += 1

    def serve_timer(self, interval: float, first: float) -> None:
        get = self.buffer.get
        timeout = first
        while True:
            try:
                get(timeout=timeout)
            except Empty:
                self.beats += 1  # the comment is written here
            else:
                self.events += 1
            timeout = interval


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_during(seconds: float) -> float:
    """CPU time this process spends while the main greenlet sleeps ``seconds``."""
    start = time.process_time()
    gevent.sleep(seconds)
    return time.process_time() - start


def run(job: dict[str, Any]) -> dict[str, Any]:
    design = job["design"]
    count = job["streams"]
    interval = job.get("interval", 0.5)
    intervals = job.get("intervals", 4)
    rounds = job.get("hot_rounds", 5)
    rng = random.Random(1)
    hub_idle = cpu_during(interval)  # the empty hub, for reference
    rss_start = rss_kib()
    streams = [Stream() for _ in range(count)]
    loops = heartbeat.Heartbeat()
    greenlets = []
    now = time.monotonic()
    for stream in streams:
        if design == "shared":
            stream.last_write = now - rng.random() * interval
            greenlets.append(gevent.spawn(stream.serve_shared))
            loops.add(stream, interval)
        else:
            greenlets.append(gevent.spawn(stream.serve_timer, interval, rng.random() * interval))
    gevent.sleep(interval)  # every stream waits now, every phase is in play
    rss_streams = rss_kib()

    beats = sum(s.beats for s in streams)
    idle_cpu = cpu_during(interval * intervals)
    beats = sum(s.beats for s in streams) - beats
    per_interval = idle_cpu / intervals
    wakeups = 3 * intervals if design == "shared" else beats
    result: dict[str, Any] = {
        "design": design,
        "library": os.path.dirname(heartbeat.__file__),
        "streams": count,
        "interval_s": interval,
        "intervals": intervals,
        "hub_idle_cpu_s": hub_idle,
        "rss_kib_per_stream": (rss_streams - rss_start) / count,
        "idle_cpu_per_interval_ms": per_interval * 1e3,
        "idle_cpu_us_per_stream_per_interval": per_interval / count * 1e6,
        "beats_per_stream_per_interval": beats / count / intervals,
        "wakeups": wakeups,
        "cpu_us_per_wakeup": idle_cpu / wakeups * 1e6 if wakeups else math.nan,
        "idle_cpu_us_per_beat": idle_cpu / beats * 1e6 if beats else math.nan,
        # One beat per stream per 15 s, at the measured cost of a beat.
        "idle_cpu_pct_at_15s": 100 * (idle_cpu / beats) * count / 15.0 if beats else math.nan,
    }

    if design == "shared":
        # No stream due: every wake-up only scans.
        future = time.monotonic() + 3600
        for stream in streams:
            stream.last_write = future
        scan_cpu = cpu_during(interval * intervals)
        result["scan_ns_per_stream_per_wakeup"] = scan_cpu / (3 * intervals) / count * 1e9

    # The hot path: one event to every waiting handler, `rounds` times.
    served = sum(s.events for s in streams)
    start = time.process_time()
    for _ in range(rounds):
        for stream in streams:
            stream.buffer.put_nowait(b"data: x\n\n")
        gevent.idle()
    hot_cpu = time.process_time() - start
    served = sum(s.events for s in streams) - served
    result["hot_events"] = served
    result["hot_us_per_event"] = hot_cpu / served * 1e6 if served else math.nan

    loops.stop()
    gevent.killall(greenlets)
    return result


def main() -> None:
    job = json.loads(sys.argv[1])
    json.dump(run(job), sys.stdout)


if __name__ == "__main__":
    main()
