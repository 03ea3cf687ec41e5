"""Waking a greenlet that waits on a subscription, from any thread, in its own hub.

A broker's fan-out (:mod:`~flask_sse_stream._broker._local`) may run in any
OS thread: a publisher's, the Redis reader's, a request's under the werkzeug
development server, which runs each request in its own thread with its own
hub. The subscriber it wakes waits in a greenlet of some hub. This module
holds what the two share: the :class:`Subscriber` (the broker's side of a
subscription: its queue, its waiter, its sink) and the :class:`HubWaker` of
each hub, plus the OS thread primitives every broker uses.

How it is built, and why:

* A waiting subscriber registers a gevent ``Waiter`` (one per wait, not per
  event). A fan-out queues the waiters it wakes on their hub's waker and
  kicks each waker once: from the same OS thread (hence the same hub) with
  one ``loop.run_callback``; from another thread, which must not touch that
  hub's gevent objects, with the waker's ``async_`` watcher's ``send()``,
  the one thread-safe way into a libev/libuv loop. Either way one callback
  in the subscriber's own hub switches to every queued waiter.
* A subscriber may have a *sink* (``Subscription.set_sink``): that callback
  runs in the hub instead of the switch and, if it takes the queued events
  itself, the waiter sleeps on. An interrupt or the end of the subscription
  switches without asking it. An event stream's sink writes the events
  straight to the client socket without a greenlet switch, where its server
  lets it, which lets one publish reach a thousand subscribers in one tight
  pass.
* Whoever wakes a subscriber pops its waiter from :attr:`Subscriber.waiting`
  (at most one), and the owner announces itself there before it looks at
  its queue and sleeps, so a wake-up is never lost or doubled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent import monkey
from gevent.hub import Hub, Waiter

__all__ = [
    "HubWaker",
    "Subscriber",
    "allocate_lock",
    "current_waker",
    "get_ident",
    "wake",
]

# The process may be monkey-patched; these must be the OS thread primitives.
allocate_lock = monkey.get_original("_thread", "allocate_lock")
get_ident = monkey.get_original("_thread", "get_ident")
_ThreadLocal = monkey.get_original("_thread", "_local")


def _switch_all(waker: HubWaker) -> None:
    # Runs in the hub greenlet: Waiter.switch must be called from there.
    pending = waker.pending
    while pending:
        try:
            waiter, sub = pending.popleft()
        except IndexError:
            return
        sink = sub.sink
        if sink is not None and not (sub.ended or sub.interrupted) and sink():
            # The sink took the events; the owner waits on. Announce, then
            # look: a publisher in another thread may have queued more since.
            sub.waiting.append((waker, waiter))
            if not (sub.queue or sub.ended or sub.interrupted):
                continue
            try:
                sub.waiting.pop()
            except IndexError:
                continue  # that publisher found the waiter and queued it again
        waiter.switch(None)


class HubWaker:
    """Wakes the waiting greenlets of one hub, from its own thread or others.

    A fan-out queues the waiters it wakes here and kicks the waker once,
    whatever their number: one hub callback then switches to each in turn
    (a callback per waiter costs more than the switch itself).

    The async watcher runs only while a greenlet of the hub waits: an
    active watcher keeps the hub's loop alive (so a thread whose only
    business is waiting for a publisher in another thread does not get
    ``LoopExit``), and a stopped one leaves no reference from the loop to us.
    """

    __slots__ = ("_scheduled", "_waiting", "_watcher", "hub", "loop", "pending", "thread_id")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop = hub.loop
        self.thread_id: int = get_ident()
        # Appended to from any thread (atomic under the GIL), drained in the hub.
        self.pending: deque[tuple[Waiter[Any], Subscriber]] = deque()
        self._watcher = hub.loop.async_()
        self._waiting = 0
        self._scheduled = False

    def enter(self) -> None:
        if not self._waiting:
            self._watcher.start(_switch_all, self)
        self._waiting += 1

    def leave(self) -> None:
        self._waiting -= 1
        if not self._waiting:
            self._watcher.stop()

    def add(self, waiter: Waiter[Any], sub: Subscriber) -> None:
        """Queue ``sub``'s ``waiter`` to be switched to at the next :meth:`kick`."""
        self.pending.append((waiter, sub))

    def kick(self, thread_id: int) -> None:
        """Switch to the queued waiters soon; ``thread_id`` is the caller's thread."""
        if thread_id != self.thread_id:
            try:
                self._watcher.send()  # the only thread-safe way into another hub
            except ValueError:
                pass  # that hub was destroyed, and whoever waited in it went with it
        elif not self._scheduled:
            self._scheduled = True
            self.loop.run_callback(self._run)

    def _run(self) -> None:
        self._scheduled = False
        _switch_all(self)


_wakers = _ThreadLocal()


def current_waker() -> HubWaker:
    """The waker of the current thread's hub, made on first use."""
    hub = gevent.get_hub()
    waker: HubWaker | None = getattr(_wakers, "waker", None)
    if waker is None or waker.hub is not hub:
        waker = _wakers.waker = HubWaker(hub)
    return waker


class Subscriber:
    """What the broker holds of one subscription; the fan-out loop's unit."""

    __slots__ = (
        "__weakref__",
        "channels",
        "dropped",
        "ended",
        "gap",
        "interrupted",
        "kind",
        "latest",
        "policy",
        "queue",
        "sink",
        "waiting",
    )

    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        # Events; ``(key, event)`` entries for a ``conflate`` subscriber.
        self.queue: deque[Any] = deque()
        # The slow-consumer policy (None: disconnect) and its state, see _policy.
        self.policy: str | None = None
        self.kind = 0  # what the fan-out appends: 0 the event, 1 the (key, event) entry
        self.gap: list[Any] | None = None
        self.latest: dict[Any, Any] | None = None
        # At most one (waker, waiter): the owner appends it before it sleeps,
        # whoever wakes it pops it, so a wake-up is never lost or doubled.
        self.waiting: list[tuple[HubWaker, Waiter[Any]]] = []
        self.ended = False
        self.dropped = False
        self.sink: Callable[[], bool] | None = None
        # Set by interrupt() for the wait in progress: a flag, not a kind of
        # wake-up, since a publisher may already have queued the waiter.
        self.interrupted = False


def wake(sub: Subscriber, thread_id: int) -> None:
    """Wake ``sub``'s waiting greenlet, if any; ``thread_id`` is the caller's thread."""
    try:
        waker, waiter = sub.waiting.pop()
    except IndexError:
        return  # it woke up by itself meanwhile
    waker.add(waiter, sub)
    waker.kick(thread_id)
