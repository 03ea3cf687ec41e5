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

The same kind of loop is the *watchdog* of the write timeout: it looks at
every stream a third of ``SSE_WRITE_TIMEOUT`` apart and drops a client
whose write has taken the whole timeout (so within 4/3 of it), without a
timer per write.

A hub (one per thread) has its own loops: the werkzeug development server
runs each request in a thread with its own gevent hub.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Protocol

import gevent
from gevent.hub import Hub

__all__ = ["Beatable", "Heartbeat", "for_current_hub", "watchdog_for_current_hub"]


class Beatable(Protocol):
    """What the heartbeat and the watchdog need from a stream."""

    last_write: float
    writing_since: float

    def beat(self) -> None:
        """Send a heartbeat now (without blocking)."""

    def write_timed_out(self) -> None:
        """Drop the client: a write took the whole timeout (without blocking)."""


Check = Callable[[Beatable, float, float, float], None]


def _beat_if_idle(stream: Beatable, tick: float, idle: float, interval: float) -> None:
    if tick - stream.last_write >= idle:
        stream.beat()


def _drop_if_stuck(stream: Beatable, tick: float, idle: float, interval: float) -> None:
    since = stream.writing_since
    if since and tick - since >= interval:
        stream.write_timed_out()


class _Loop:
    __slots__ = ("check", "greenlet", "interval", "streams")

    def __init__(self, interval: float, check: Check) -> None:
        self.interval = interval
        self.check = check
        self.streams: set[Beatable] = set()
        self.greenlet: gevent.Greenlet[[], None] | None = None

    def run(self) -> None:
        period = self.interval / 3
        idle = self.interval - period
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
            check, interval = self.check, self.interval
            for stream in self.streams:
                check(stream, tick, idle, interval)


class Heartbeat:
    """The heartbeat (or watchdog) loops of one gevent hub, one per interval in use."""

    def __init__(self, check: Check = _beat_if_idle) -> None:
        self._check = check
        self._loops: dict[float, _Loop] = {}

    def add(self, stream: Beatable, interval: float) -> None:
        """Beat ``stream`` whenever it has been idle for ``interval`` seconds."""
        loop = self._loops.get(interval)
        if loop is None:
            loop = self._loops[interval] = _Loop(interval, self._check)
        loop.streams.add(stream)
        if loop.greenlet is None:
            loop.greenlet = gevent.spawn(loop.run)

    def discard(self, stream: Beatable, interval: float) -> None:
        """Stop beating ``stream``; the last stream of a loop ends the loop."""
        loop = self._loops.get(interval)
        if loop is not None:
            loop.streams.discard(stream)
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


_heartbeats: weakref.WeakKeyDictionary[Hub, Heartbeat] = weakref.WeakKeyDictionary()
_watchdogs: weakref.WeakKeyDictionary[Hub, Heartbeat] = weakref.WeakKeyDictionary()


def for_current_hub() -> Heartbeat:
    """Return the heartbeat of the calling thread's gevent hub."""
    hub = gevent.get_hub()
    heartbeat = _heartbeats.get(hub)
    if heartbeat is None:
        heartbeat = _heartbeats[hub] = Heartbeat(_beat_if_idle)
    return heartbeat


def watchdog_for_current_hub() -> Heartbeat:
    """Return the write-timeout watchdog of the calling thread's gevent hub."""
    hub = gevent.get_hub()
    watchdog = _watchdogs.get(hub)
    if watchdog is None:
        watchdog = _watchdogs[hub] = Heartbeat(_drop_if_stuck)
    return watchdog
