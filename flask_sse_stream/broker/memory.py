"""The in-process broker: channels, bounded history and fan-out in one process.

:class:`MemoryBroker` follows the contract of :mod:`flask_sse_stream.broker.base`.
It serves every subscriber of one process, whichever thread and gevent hub
the subscriber runs in, and accepts events from any greenlet or thread.

How it is built, and why:

* One real (never monkey-patched) lock guards the broker's state. A publish
  appends to the channel's history and to every subscriber's queue inside
  it, and a subscribe computes its replay and registers the subscriber
  inside it, so the hand-over from replay to live has no gap and no
  duplicate, and every subscriber sees events in id order. Nothing that can
  switch greenlets happens while it is held.
* Ids are ``<epoch>-<n>``: ``epoch`` is random per broker, so an id from an
  earlier process is unknown here; ``n`` is one sequence for all channels,
  in base 36. Replay from ``n`` takes, for each requested channel, the tail
  of its history after ``n`` and merges the tails by sequence.
* Fan-out appends the same :class:`~flask_sse_stream.Event` object to each
  subscriber's :class:`~collections.deque` and wakes only subscribers that
  wait: nothing is allocated per subscriber per event. A full queue drops
  that subscriber; the publisher never waits.
* A waiting subscriber registers a gevent ``Waiter`` (one per wait, not per
  event). A publish queues the waiters it wakes on their hub's waker and
  kicks each waker once: from the same OS thread (hence the same hub) with
  one ``loop.run_callback``; from another thread, which must not touch that
  hub's gevent objects, with the waker's ``async_`` watcher's ``send()``,
  the one thread-safe way into a libev/libuv loop. Either way one callback
  in the subscriber's own hub switches to every queued waiter. The werkzeug
  development server runs each request in its own thread with its own hub,
  so the cross-thread path is the normal case there, not a corner.
* ``deque.append`` and ``deque.popleft`` are atomic under the GIL, which is
  what lets a publisher thread append to a queue that a greenlet of another
  thread pops from. The only compound step, "check the length, then
  append", happens under the broker lock, and only publishers append.
"""

from __future__ import annotations

import heapq
import re
import secrets
from collections import deque
from collections.abc import Iterator, Sequence
from operator import itemgetter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent import monkey
from gevent.hub import Hub, Waiter

from ..event import Event
from .base import RESET_EVENT, Broker, BrokerClosedError, BrokerStats, Subscription

__all__ = ["MemoryBroker", "MemorySubscription"]

# The process may be monkey-patched; these must be the OS thread primitives.
_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_get_ident = monkey.get_original("_thread", "get_ident")
_ThreadLocal = monkey.get_original("_thread", "_local")

_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_PART = r"(0|[1-9a-z][0-9a-z]{0,15})"
_ID: Final = re.compile(_PART + "-" + _PART, re.ASCII)
_MAX_ID_LENGTH: Final = 40
_TIMED_OUT: Final = object()
_seq_of = itemgetter(0)


def _base36(number: int) -> str:
    if number < 36:
        return _DIGITS[number]
    digits = []
    while number:
        number, digit = divmod(number, 36)
        digits.append(_DIGITS[digit])
    return "".join(reversed(digits))


# Waking greenlets that wait on a subscription, per hub.


def _switch_all(pending: deque[Waiter[Any]]) -> None:
    # Runs in the hub greenlet: Waiter.switch must be called from there.
    while pending:
        try:
            waiter = pending.popleft()
        except IndexError:
            return
        waiter.switch(None)


class _HubWaker:
    """Wakes the waiting greenlets of one hub, from its own thread or others.

    A publish queues the waiters it wakes here and kicks the waker once,
    whatever their number: one hub callback then switches to each in turn
    (a callback per waiter costs more than the switch itself).

    The async watcher runs only while a greenlet of the hub waits: an
    active watcher keeps the hub's loop alive (so a thread whose only
    business is waiting for a publisher in another thread does not get
    ``LoopExit``), and a stopped one leaves no reference from the loop to us.
    """

    __slots__ = ("_pending", "_scheduled", "_waiting", "_watcher", "hub", "loop", "thread_id")

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop = hub.loop
        self.thread_id: int = _get_ident()
        # Appended to from any thread (atomic under the GIL), drained in the hub.
        self._pending: deque[Waiter[Any]] = deque()
        self._watcher = hub.loop.async_()
        self._waiting = 0
        self._scheduled = False

    def enter(self) -> None:
        if not self._waiting:
            self._watcher.start(_switch_all, self._pending)
        self._waiting += 1

    def leave(self) -> None:
        self._waiting -= 1
        if not self._waiting:
            self._watcher.stop()

    def add(self, waiter: Waiter[Any]) -> None:
        """Queue ``waiter`` to be switched to at the next :meth:`kick`."""
        self._pending.append(waiter)

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
        _switch_all(self._pending)


_wakers = _ThreadLocal()


def _current_waker() -> _HubWaker:
    hub = gevent.get_hub()
    waker: _HubWaker | None = getattr(_wakers, "waker", None)
    if waker is None or waker.hub is not hub:
        waker = _wakers.waker = _HubWaker(hub)
    return waker


class _Subscriber:
    """What the broker holds of one subscription; the fan-out loop's unit."""

    __slots__ = ("__weakref__", "channels", "dropped", "ended", "queue", "waiting")

    def __init__(self, channels: tuple[str, ...]) -> None:
        self.channels = channels
        self.queue: deque[Event] = deque()
        # At most one (waker, waiter): the owner appends it before it sleeps,
        # whoever wakes it pops it, so a wake-up is never lost or doubled.
        self.waiting: list[tuple[_HubWaker, Waiter[Any]]] = []
        self.ended = False
        self.dropped = False


def _wake(sub: _Subscriber, thread_id: int) -> None:
    try:
        waker, waiter = sub.waiting.pop()
    except IndexError:
        return  # it woke up by itself meanwhile
    waker.add(waiter)
    waker.kick(thread_id)


class _History:
    __slots__ = ("entries", "evicted")

    def __init__(self, size: int) -> None:
        self.entries: deque[tuple[int, Event]] = deque(maxlen=size)
        self.evicted = 0
        """The sequence number of the newest event that fell out."""


class MemoryBroker:
    """The default broker: keeps everything in this process.

    :param history_size: events kept per channel for replay
        (``SSE_HISTORY_SIZE``); ``0`` keeps none, so every reconnect with a
        last id gets the reset event.
    :param queue_size: live events a subscription may have waiting before it
        is dropped as slow (``SSE_QUEUE_SIZE``). The replay a subscription
        starts with does not count.

    A channel's history lives as long as the broker (it is bounded by
    ``history_size``); its subscriber set only as long as it has subscribers.
    """

    def __init__(self, history_size: int = 1000, queue_size: int = 1000) -> None:
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
            raise ValueError(f"history_size must be a whole number >= 0, got {history_size!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be a whole number >= 1, got {queue_size!r}")
        self._history_size = history_size
        self._queue_size = queue_size
        self._lock = _allocate_lock()
        self._epoch = _base36(secrets.randbits(40))
        self._seq = 0
        self._histories: dict[str, _History] = {}
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._open = 0
        # Subscriptions garbage-collected without close(): released under
        # the lock by the next call, since a finalizer may run anywhere,
        # even inside publish() while this thread holds the lock.
        self._orphans: deque[_Subscriber] = deque()
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._replayed = 0
        self._resets = 0
        self._dropped_slow = 0

    @property
    def history_size(self) -> int:
        """Events kept per channel."""
        return self._history_size

    @property
    def queue_size(self) -> int:
        """Live events a subscription may have waiting before it is dropped."""
        return self._queue_size

    def __repr__(self) -> str:
        return (
            f"<MemoryBroker epoch={self._epoch} published={self._published} "
            f"subscriptions={self._open}{' closed' if self._closed else ''}>"
        )

    # Publishing.

    def publish(self, channel: str, event: Event) -> Event:
        """Store ``event`` in ``channel``'s history and deliver it; see :class:`Broker`."""
        if not isinstance(event, Event):
            raise TypeError(f"publish() takes an Event, not {type(event).__name__}")
        if not isinstance(channel, str) or not channel:
            raise TypeError(f"a channel is a non-empty str, not {channel!r:.80}")
        me = _get_ident()
        with self._lock:
            if self._closed:
                raise BrokerClosedError("publish() on a closed broker")
            if self._orphans:
                self._release_orphans(me)
            seq = self._seq = self._seq + 1
            if event.id is None:
                event = Event(event.data, event.event, f"{self._epoch}-{_base36(seq)}", event.retry)
            history = self._histories.get(channel)
            if history is None:
                history = self._histories[channel] = _History(self._history_size)
            entries = history.entries
            if len(entries) == self._history_size:
                history.evicted = entries[0][0] if entries else seq
            entries.append((seq, event))
            self._published += 1
            subscribers = self._subscribers.get(channel)
            if subscribers:
                self._fan_out(subscribers, event, me)
        return event

    def _fan_out(self, subscribers: set[_Subscriber], event: Event, me: int) -> None:
        limit = self._queue_size
        full: list[_Subscriber] | None = None
        # Usually every waiting subscriber is in one hub; with the werkzeug
        # server each is in its own.
        waker: _HubWaker | None = None
        more_wakers: set[_HubWaker] | None = None
        for sub in subscribers:
            queue = sub.queue
            if len(queue) >= limit:
                if full is None:
                    full = []
                full.append(sub)
                continue
            queue.append(event)
            if sub.waiting:
                try:
                    its_waker, waiter = sub.waiting.pop()
                except IndexError:
                    continue  # it woke up by itself meanwhile
                its_waker.add(waiter)
                if its_waker is not waker:
                    if waker is None:
                        waker = its_waker
                    elif more_wakers is None:
                        more_wakers = {its_waker}
                    else:
                        more_wakers.add(its_waker)
        if waker is not None:
            waker.kick(me)
            if more_wakers is not None:
                for other in more_wakers:
                    if other is not waker:
                        other.kick(me)
        if full is None:
            self._delivered += len(subscribers)
        else:
            self._delivered += len(subscribers) - len(full)
            for sub in full:
                self._end(sub, me, dropped=True)

    # Subscribing.

    def subscribe(self, channels: Sequence[str], last_id: str | None = None) -> MemorySubscription:
        """Subscribe to ``channels`` from ``last_id``; see :class:`Broker`."""
        if isinstance(channels, str):
            raise TypeError(f"channels is a sequence of names; write [{channels!r:.80}]")
        names = tuple(dict.fromkeys(channels))
        if not names:
            raise ValueError("subscribe() needs at least one channel")
        for name in names:
            if not isinstance(name, str) or not name:
                raise TypeError(f"a channel is a non-empty str, not {name!r:.80}")
        if last_id is not None and not isinstance(last_id, str):
            raise TypeError(f"last_id is a str or None, not {type(last_id).__name__}")
        last_seq = None if last_id is None else self._parse(last_id)
        sub = _Subscriber(names)
        me = _get_ident()
        reset = False
        with self._lock:
            if self._closed:
                raise BrokerClosedError("subscribe() on a closed broker")
            if self._orphans:
                self._release_orphans(me)
            replay: list[Event] = []
            if last_id is not None:
                tail = None if last_seq is None else self._tail(names, last_seq)
                if tail is None:
                    position = f"{self._epoch}-{_base36(self._seq)}"
                    replay.append(Event("", event=RESET_EVENT, id=position))
                    reset = True
                    self._resets += 1
                else:
                    replay = tail
                    self._replayed += len(tail)
            subscribers = self._subscribers
            for name in names:
                channel_subs = subscribers.get(name)
                if channel_subs is None:
                    channel_subs = subscribers[name] = set()
                channel_subs.add(sub)
            self._open += 1
        return MemorySubscription(self, sub, replay, reset)

    def _parse(self, last_id: str) -> int | None:
        """The sequence number ``last_id`` names, or ``None`` if it is not one of ours."""
        if len(last_id) > _MAX_ID_LENGTH:
            return None
        match = _ID.fullmatch(last_id)
        if match is None or match[1] != self._epoch:
            return None
        return int(match[2], 36)

    def _tail(self, names: tuple[str, ...], last_seq: int) -> list[Event] | None:
        """The events of ``names`` after ``last_seq`` in order; ``None``: cannot say."""
        if last_seq > self._seq:
            return None
        runs: list[list[tuple[int, Event]]] = []
        for name in names:
            history = self._histories.get(name)
            if history is None:
                continue
            if history.evicted > last_seq:
                return None
            run: list[tuple[int, Event]] = []
            for entry in reversed(history.entries):
                if entry[0] <= last_seq:
                    break
                run.append(entry)
            if run:
                run.reverse()
                runs.append(run)
        if not runs:
            return []
        if len(runs) == 1:
            return [event for _, event in runs[0]]
        return [event for _, event in heapq.merge(*runs, key=_seq_of)]

    # Ending subscriptions.

    def _end(self, sub: _Subscriber, me: int, *, dropped: bool = False) -> None:
        """Unregister ``sub``, free its queue and wake it; the lock is held."""
        if sub.ended:
            return
        sub.ended = True
        sub.dropped = dropped
        subscribers = self._subscribers
        for name in sub.channels:
            channel_subs = subscribers.get(name)
            if channel_subs is not None:
                channel_subs.discard(sub)
                if not channel_subs:
                    del subscribers[name]
        sub.queue.clear()
        self._open -= 1
        if dropped:
            self._dropped_slow += 1
        _wake(sub, me)

    def _release_orphans(self, me: int) -> None:
        orphans = self._orphans
        while orphans:
            self._end(orphans.popleft(), me)

    def _close_subscriber(self, sub: _Subscriber) -> None:
        if sub.ended:
            return
        me = _get_ident()
        with self._lock:
            self._end(sub, me)

    def _orphaned(self, sub: _Subscriber) -> None:
        if not sub.ended:
            self._orphans.append(sub)

    def close(self) -> None:
        """End every subscription, forget every channel; idempotent."""
        me = _get_ident()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            everyone: set[_Subscriber] = set()
            for channel_subs in self._subscribers.values():
                everyone |= channel_subs
            for sub in everyone:
                self._end(sub, me)
            self._orphans.clear()
            self._histories.clear()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def stats(self) -> BrokerStats:
        """Return a snapshot of the counters; see :class:`BrokerStats`."""
        me = _get_ident()
        with self._lock:
            if self._orphans:
                self._release_orphans(me)
            everyone: set[_Subscriber] = set()
            per_channel: dict[str, int] = {}
            for name, channel_subs in self._subscribers.items():
                per_channel[name] = len(channel_subs)
                everyone |= channel_subs
            return BrokerStats(
                subscribers=per_channel,
                subscriptions=self._open,
                published=self._published,
                delivered=self._delivered,
                replayed=self._replayed,
                resets=self._resets,
                dropped_slow=self._dropped_slow,
                queued=sum(len(sub.queue) for sub in everyone),
                history=sum(len(h.entries) for h in self._histories.values()),
            )


class MemorySubscription:
    """A subscription to a :class:`MemoryBroker`; see :class:`Subscription`.

    Built by :meth:`MemoryBroker.subscribe`. One greenlet iterates it (any
    thread, any hub); :meth:`close` may be called from anywhere. If it is
    garbage-collected without being closed, the broker releases it on its
    next call.
    """

    __slots__ = ("__weakref__", "_broker", "_queue", "_replay", "_reset", "_sub")

    def __init__(
        self, broker: MemoryBroker, sub: _Subscriber, replay: list[Event], reset: bool
    ) -> None:
        self._broker = broker
        self._sub = sub
        self._queue = sub.queue
        self._replay: deque[Event] = deque(replay)
        self._reset = reset

    def __repr__(self) -> str:
        state = "dropped" if self._sub.dropped else "closed" if self._sub.ended else "open"
        return f"<MemorySubscription {list(self._sub.channels)!r:.200} {state}>"

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels subscribed to, without duplicates, in the order given."""
        return self._sub.channels

    @property
    def dropped(self) -> bool:
        """True once the subscription was dropped because its queue overflowed."""
        return self._sub.dropped

    @property
    def closed(self) -> bool:
        """True once the subscription has ended, for whatever reason."""
        return self._sub.ended

    @property
    def reset(self) -> bool:
        """True if the subscription started with a reset event instead of a replay."""
        return self._reset

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        """Return the next event, waiting for one; ``StopIteration`` once ended."""
        if self._replay:
            try:
                return self._replay.popleft()
            except IndexError:
                pass  # closed meanwhile from another thread
        queue = self._queue
        while True:
            if queue:
                try:
                    return queue.popleft()
                except IndexError:
                    pass  # closed meanwhile from another thread
            if self._sub.ended:
                raise StopIteration
            self._wait(None)

    def get_batch(self, max_items: int) -> list[Event]:
        """Take up to ``max_items`` queued events (replay first) without waiting."""
        batch: list[Event] = []
        try:
            replay = self._replay
            while replay and len(batch) < max_items:
                batch.append(replay.popleft())
            pop = self._queue.popleft
            for _ in range(min(len(self._queue), max_items - len(batch))):
                batch.append(pop())
        except IndexError:
            pass  # closed meanwhile from another thread
        return batch

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until an event is queued or the subscription ends.

        Returns ``False`` if ``timeout`` seconds passed first.
        """
        if self._replay or self._queue or self._sub.ended:
            return True
        return self._wait(timeout)

    def _wait(self, timeout: float | None) -> bool:
        sub = self._sub
        waker = _current_waker()
        waiter: Waiter[Any] = Waiter(waker.hub)
        waker.enter()
        try:
            sub.waiting.append((waker, waiter))
            # Announce, then look: a publisher appends, then looks for a
            # waiter, so one of the two sees the other.
            if self._queue or sub.ended:
                return True
            if timeout is None:
                waiter.get()
                return True
            timer = waker.loop.timer(max(timeout, 0.0))
            # update: measure from now, not from the loop's cached time.
            timer.start(waiter.switch, _TIMED_OUT, update=True)
            try:
                return waiter.get() is not _TIMED_OUT
            finally:
                timer.close()
        finally:
            sub.waiting.clear()
            waker.leave()

    def close(self) -> None:
        """End the subscription and release it; idempotent, callable from anywhere."""
        self._replay.clear()
        self._broker._close_subscriber(self._sub)

    def __enter__(self) -> MemorySubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            sub = self._sub
        except AttributeError:
            return  # __init__ did not finish
        self._broker._orphaned(sub)


if TYPE_CHECKING:
    # mypy checks that the classes follow the contract.
    _broker: Broker = MemoryBroker()
    _subscription: Subscription = _broker.subscribe(["c"])
