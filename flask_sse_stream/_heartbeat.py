"""The heartbeat: one greenlet per interval keeps idle streams alive.

Proxies cut connections that carry no bytes for a while (nginx and AWS ALB
after 60 s by default), so every stream that has written nothing for its
heartbeat interval gets a comment line.

One loop serves all streams that share an interval, instead of a timer per
stream: a per-stream timeout costs a timer start and stop on every event,
while the shared loop only compares a timestamp per stream per wake-up (see
``docs/design.md`` for the measurement). The loop wakes three times per
interval and beats the streams idle for two thirds of it or more, so no
stream is ever silent for longer than the interval. ``beat()`` must not
block or close the stream. The last stream to leave a loop kills it, so an
idle process has no timer; with the heartbeat disabled none ever starts.

The same loop is the *watchdog* of the write timeout: a stream whose
server has been writing one chunk for ``SSE_WRITE_TIMEOUT`` is told so and
drops its client, without a timer per write. A stream joins the loop of the
shorter of its two intervals (its heartbeat, its write timeout), so both are
checked at least three times per interval.

A hub (one per thread) has its own loops: the werkzeug development server
runs each request in a thread with its own gevent hub.
"""

from __future__ import annotations

import math
import time
import weakref
from typing import Protocol

import gevent
from gevent.hub import Hub

__all__ = ["Beatable", "Heartbeat", "for_current_hub", "interval_for"]


class Beatable(Protocol):
    """What the heartbeat loop needs from a stream."""

    last_write: float
    """When the stream last wrote (``time.monotonic()``)."""
    writing_since: float
    """When the server began the write it is doing now (never before ``last_write``), or 0."""
    beat_after: float | None
    """Seconds of silence after which it gets a heartbeat; ``None``: never."""
    write_timeout: float | None
    """Seconds a write may take; ``None``: any."""

    def beat(self) -> None:
        """Send a heartbeat now (without blocking)."""

    def write_timed_out(self) -> None:
        """Drop the client: a write took the whole timeout (without blocking)."""


def interval_for(heartbeat: float | None, write_timeout: float | None) -> float | None:
    """The loop a stream joins: the shorter of its intervals, or none at all."""
    intervals = [x for x in (heartbeat, write_timeout) if x]
    return min(intervals) if intervals else None


class _Loop:
    __slots__ = ("greenlet", "interval", "streams")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # Each stream with the silence after which it needs a look: the
        # shorter of its heartbeat and write timeout. One read of the stream
        # (its last write) per stream per scan, as in a loop of heartbeats
        # alone: at 10,000 streams a scan is bound by cache misses, one per
        # attribute of the stream it reads (docs/benchmarks.md, S1).
        self.streams: dict[Beatable, float] = {}
        self.greenlet: gevent.Greenlet[[], None] | None = None

    def run(self) -> None:
        period = self.interval / 3
        tick = time.monotonic()
        while True:
            # A fixed schedule, compared with the scheduled time: sleeping a
            # period after each scan drifts later by the scan's own cost, and
            # a stream beaten at one wake-up (its last write a hair after the
            # tick) then looked idle two wake-ups later: 1.24 to 1.5 beats per
            # interval instead of 1 (measured, docs/benchmarks.md).
            tick += period
            now = time.monotonic()
            if now > tick + period:
                tick = now  # fell behind (a long-blocked hub): no burst of scans
            gevent.sleep(max(0.0, tick - now))
            for stream, silence in self.streams.items():
                # A write under way began after the last one ended, so a
                # stream that wrote within `silence` needs neither a beat nor
                # a write-timeout check.
                if tick - stream.last_write < silence:
                    continue
                since = stream.writing_since
                if since:
                    timeout = stream.write_timeout
                    if timeout is not None and tick - since >= timeout:
                        stream.write_timed_out()
                    continue  # a stream being written needs no heartbeat
                after = stream.beat_after
                if after is not None and tick - stream.last_write >= after:
                    stream.beat()


class Heartbeat:
    """The heartbeat loops of one gevent hub, one per interval in use."""

    def __init__(self) -> None:
        self._loops: dict[float, _Loop] = {}

    def add(self, stream: Beatable, interval: float) -> None:
        """Look at ``stream`` a third of ``interval`` apart (see :func:`interval_for`)."""
        loop = self._loops.get(interval)
        if loop is None:
            loop = self._loops[interval] = _Loop(interval)
        silences = [x for x in (stream.beat_after, stream.write_timeout) if x is not None]
        loop.streams[stream] = min(silences, default=math.inf)
        if loop.greenlet is None:
            loop.greenlet = gevent.spawn(loop.run)

    def discard(self, stream: Beatable, interval: float) -> None:
        """Stop beating ``stream``; the last stream of a loop ends the loop."""
        loop = self._loops.get(interval)
        if loop is not None:
            loop.streams.pop(stream, None)
            if not loop.streams:
                del self._loops[interval]
                if loop.greenlet is not None:
                    loop.greenlet.kill(block=False)

    def stop(self) -> None:
        """Kill every loop of this hub now (for tests and shutdown)."""
        for loop in self._loops.values():
            if loop.greenlet is not None:
                loop.greenlet.kill()
        self._loops.clear()


_by_hub: weakref.WeakKeyDictionary[Hub, Heartbeat] = weakref.WeakKeyDictionary()


def for_current_hub() -> Heartbeat:
    """Return the heartbeat of the calling thread's gevent hub."""
    hub = gevent.get_hub()
    heartbeat = _by_hub.get(hub)
    if heartbeat is None:
        heartbeat = _by_hub[hub] = Heartbeat()
    return heartbeat
