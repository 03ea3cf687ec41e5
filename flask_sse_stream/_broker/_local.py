"""What every broker does inside one process: ids, subscriber queues, fan-out.

A broker gets events from somewhere (its own ``publish`` for
:class:`~flask_sse_stream._broker.MemoryBroker`, a Redis pub/sub connection for
:class:`~flask_sse_stream._broker.RedisBroker`) and hands each to the local
subscriptions of its channel. That second half is the same for both, and
lives here:

* :class:`LocalFanOut`, the base class: the subscribers per channel, the
  fan-out loop, dropping slow subscribers, ending and releasing
  subscriptions (also those garbage-collected without ``close()``);
* :class:`PendingFanOut`, for the brokers fed by a Redis pub/sub link: a
  new subscriber buffers what the link brings until its replay is read;
* :class:`LocalSubscription`, what a subscriber iterates;
* the id format ``<epoch>-<n>``, ``n`` in base 36, and the checks of the
  brokers' arguments.

How it is built, and why:

* One real (never monkey-patched) lock guards a broker's state. Fan-out
  appends to every subscriber's queue inside it, so every subscriber sees
  events in the order they were fanned out. Nothing that can switch
  greenlets happens while it is held.
* Fan-out appends the same :class:`~flask_sse_stream.Event` object to each
  subscriber's :class:`~collections.deque` and wakes only subscribers that
  wait: nothing is allocated per subscriber per event. A full queue drops
  that subscriber; the publisher never waits. A subscriber whose channels
  follow another slow-consumer policy has a plain queue too (of
  ``(key, event)`` entries under ``conflate``): only a full one takes that
  policy's path (:mod:`~flask_sse_stream._broker._policy`) instead of being
  dropped, and its subscription takes its events under the lock.
* A fan-out queues the waiters it wakes on their hub's waker and kicks
  each waker once (see :mod:`~flask_sse_stream._broker._wakeup`).
* ``deque.append`` and ``deque.popleft`` are atomic under the GIL, which is
  what lets a publisher thread append to a queue that a greenlet of another
  thread pops from. The only compound step, "check the length, then
  append", happens under the broker lock, and only the fan-out appends.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from operator import itemgetter
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from gevent.hub import Waiter

from .._event import Event
from ._policy import CONFLATE, DISCONNECT, Counters, Policies, check_key, overflow, replay, take
from ._wakeup import HubWaker, Subscriber, allocate_lock, current_waker, get_ident, wake

__all__ = [
    "LocalFanOut",
    "LocalSubscription",
    "PendingFanOut",
    "PendingSubscriber",
    "base36",
    "check_publish",
    "check_sizes",
    "check_subscribe",
    "check_ttl",
    "discard",
    "parse_id",
    "seq_of",
]

S = TypeVar("S", bound=Subscriber)

_DIGITS: Final = "0123456789abcdefghijklmnopqrstuvwxyz"
_PART = r"(0|[1-9a-z][0-9a-z]{0,15})"
_ID: Final = re.compile(_PART + "-" + _PART, re.ASCII)
_MAX_ID_LENGTH: Final = 40
_TIMED_OUT: Final = object()
seq_of = itemgetter(0)
"""The sequence number of a ``(n, ...)`` history entry: the key to merge histories by."""


def base36(number: int) -> str:
    """``number`` (``>= 0``) in base 36, lower case: the ``n`` of an id."""
    if number < 36:
        return _DIGITS[number]
    digits = []
    while number:
        number, digit = divmod(number, 36)
        digits.append(_DIGITS[digit])
    return "".join(reversed(digits))


def parse_id(last_id: str) -> tuple[str, int] | None:
    """Split an id of ours into ``(epoch, n)``; ``None`` if it cannot be one."""
    if len(last_id) > _MAX_ID_LENGTH:
        return None
    match = _ID.fullmatch(last_id)
    if match is None:
        return None
    return match[1], int(match[2], 36)


def check_publish(channel: str, event: Event, key: str | None = None) -> None:
    """Check ``publish()``'s arguments.

    :raises TypeError: if they are not a name and an Event.
    :raises InvalidEventError: if ``key`` cannot be a conflation key.
    """
    if not isinstance(event, Event):
        raise TypeError(f"publish() takes an Event, not {type(event).__name__}")
    if not isinstance(channel, str) or not channel:
        raise TypeError(f"a channel is a non-empty str, not {channel!r:.80}")
    check_key(key)


def check_subscribe(channels: Sequence[str], last_id: str | None) -> tuple[str, ...]:
    """Check ``subscribe()``'s arguments; return the names without duplicates."""
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
    return names


def check_ttl(history_ttl: float | None) -> float | None:
    """Check a history TTL in seconds; ``0`` and ``None`` mean "never expires"."""
    if history_ttl is None or history_ttl == 0:
        return None
    if (
        isinstance(history_ttl, bool)
        or not isinstance(history_ttl, int | float)
        or not history_ttl > 0
    ):
        raise ValueError(f"history_ttl must be seconds > 0 or None, got {history_ttl!r}")
    return float(history_ttl)


def check_sizes(history_size: int, queue_size: int) -> None:
    """Check a broker's sizes; raise ``ValueError`` naming the one that is wrong."""
    if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 0:
        raise ValueError(f"history_size must be a whole number >= 0, got {history_size!r}")
    if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
        raise ValueError(f"queue_size must be a whole number >= 1, got {queue_size!r}")


class LocalFanOut:
    """The local half of a broker: subscriber queues, fan-out, release.

    Subclasses register subscribers in :attr:`_subscribers` under
    :attr:`_lock` and call :meth:`_fan_out` with the lock held. A subclass
    that keeps subscribers elsewhere too extends :meth:`_unregister` and
    :meth:`_everyone`.
    """

    def __init__(self, queue_size: int, slow_consumer: Policies) -> None:
        self._queue_size = queue_size
        self._policies = slow_consumer
        self._counters = Counters()
        # Channels with conflate subscribers, and how many: their fan-out
        # appends each subscriber the item of its kind.
        self._keyed: dict[str, int] = {}
        self._lock = allocate_lock()
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._open = 0
        # Subscriptions garbage-collected without close(): released under
        # the lock by the next call, since a finalizer may run anywhere,
        # even inside publish() while this thread holds the lock.
        self._orphans: deque[Subscriber] = deque()
        self._closed = False
        self._published = 0
        self._delivered = 0
        self._replayed = 0
        self._resets = 0
        self._dropped_slow = 0

    @property
    def queue_size(self) -> int:
        """Live events a subscription may have waiting before it is dropped."""
        return self._queue_size

    @property
    def slow_consumer(self) -> Policies:
        """The slow-consumer policy of each channel."""
        return self._policies

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    def _new_subscriber(self, sub: S) -> S:
        """Give ``sub`` the queue of its channels' policy; return it."""
        policy = self._policies.of_subscription(sub.channels) if self._policies else DISCONNECT
        if policy != DISCONNECT:
            sub.policy = policy
            sub.kind = policy == CONFLATE
        return sub

    def _replay_by_policy(
        self, sub: Subscriber, entries: list[tuple[Event, tuple[str, str | None]]]
    ) -> list[Event]:
        """What ``sub`` replays of ``entries`` (publish order), by its policy; the lock is held."""
        events = replay(sub.policy or DISCONNECT, entries, self._queue_size, self._counters)
        self._replayed += len(events)
        return events

    def _offer(self, sub: Subscriber, event: Event, channel: str, key: str | None) -> bool:
        """Queue one event for ``sub`` by its policy; ``False`` if it must be dropped.

        The lock is held. For the rare paths (a gap fill, going live); the
        fan-out does the same inline.
        """
        queue = sub.queue
        item = ((channel, key), event) if sub.kind else event
        if len(queue) >= self._queue_size or sub.latest is not None:
            if sub.policy is None:
                return False
            overflow(sub, item, self._queue_size, self._counters)
        else:
            queue.append(item)
        self._delivered += 1
        return True

    def _fan_out(
        self,
        subscribers: set[Subscriber],
        event: Event,
        me: int,
        channel: str = "",
        key: str | None = None,
    ) -> None:
        """Queue ``event`` (of ``channel``, with ``key``) for ``subscribers``; wake those that wait.

        The lock is held; ``me`` is the caller's thread id.
        """
        limit = self._queue_size
        full: list[Subscriber] | None = None
        # The item of each kind of subscriber: the event, or its (key, event) entry.
        items = (event, ((channel, key), event))
        keyed = channel in self._keyed if self._keyed else False
        # Usually every waiting subscriber is in one hub; with the werkzeug
        # server each is in its own.
        waker: HubWaker | None = None
        more_wakers: set[HubWaker] | None = None
        for sub in subscribers:
            queue = sub.queue
            if len(queue) >= limit:
                if full is None:
                    full = []
                full.append(sub)
                continue
            # A channel without conflate subscribers (most) pays no lookup.
            queue.append(items[sub.kind] if keyed else event)
            if sub.waiting:
                try:
                    its_waker, waiter = sub.waiting.pop()
                except IndexError:
                    continue  # it woke up by itself meanwhile
                its_waker.add(waiter, sub)
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
            dropped = 0
            for sub in full:
                if sub.policy is None:
                    self._end(sub, me, dropped=True)
                    dropped += 1
                else:
                    overflow(sub, items[sub.kind], limit, self._counters)
                    if sub.waiting:
                        wake(sub, me)
            self._delivered += len(subscribers) - dropped

    def _register(self, sub: Subscriber) -> None:
        """Add ``sub`` to the fan-out sets of its channels; the lock is held."""
        subscribers = self._subscribers
        if sub.kind:
            for name in sub.channels:
                self._keyed[name] = self._keyed.get(name, 0) + 1
        for name in sub.channels:
            channel_subs = subscribers.get(name)
            if channel_subs is None:
                channel_subs = subscribers[name] = set()
            channel_subs.add(sub)

    def _unregister(self, sub: Subscriber) -> None:
        """Remove ``sub`` from the fan-out sets; the lock is held."""
        subscribers = self._subscribers
        for name in sub.channels:
            channel_subs = subscribers.get(name)
            if channel_subs is not None:
                if sub.kind and sub in channel_subs:
                    left = self._keyed[name] - 1
                    if left:
                        self._keyed[name] = left
                    else:
                        del self._keyed[name]
                channel_subs.discard(sub)
                if not channel_subs:
                    del subscribers[name]

    def _everyone(self) -> set[Subscriber]:
        """Every open subscriber; the lock is held."""
        everyone: set[Subscriber] = set()
        for channel_subs in self._subscribers.values():
            everyone |= channel_subs
        return everyone

    def _end(self, sub: Subscriber, me: int, *, dropped: bool = False) -> None:
        """Unregister ``sub``, free its queue and wake it; the lock is held."""
        if sub.ended:
            return
        sub.ended = True
        sub.dropped = dropped
        self._unregister(sub)
        sub.queue.clear()
        sub.latest = None
        sub.gap = None
        self._open -= 1
        if dropped:
            self._dropped_slow += 1
        wake(sub, me)

    def _release_orphans(self, me: int) -> None:
        orphans = self._orphans
        while orphans:
            self._end(orphans.popleft(), me)

    def _close_subscriber(self, sub: Subscriber) -> None:
        if sub.ended:
            return
        me = get_ident()
        with self._lock:
            self._end(sub, me)

    def _orphaned(self, sub: Subscriber) -> None:
        if not sub.ended:
            self._orphans.append(sub)

    def _end_everyone(self, me: int) -> None:
        """End every subscription (the broker closes); the lock is held."""
        for sub in self._everyone():
            self._end(sub, me)
        self._orphans.clear()

    def _local_stats(self) -> dict[str, Any]:
        """The counters and local state, for a ``BrokerStats``; the lock is held."""
        if self._orphans:
            self._release_orphans(get_ident())
        per_channel = {name: len(subs) for name, subs in self._subscribers.items()}
        return {
            "subscribers": per_channel,
            "subscriptions": self._open,
            "published": self._published,
            "delivered": self._delivered,
            "replayed": self._replayed,
            "resets": self._resets,
            "dropped_slow": self._dropped_slow,
            "conflated": self._counters.conflated,
            "dropped": self._counters.dropped,
            "gaps": self._counters.gaps,
            "queued": sum(len(sub.queue) for sub in self._everyone()),
        }


def discard(table: dict[str, set[Any]], sub: Subscriber) -> None:
    """Take ``sub`` out of ``table``'s set of each of its channels, and drop emptied sets."""
    for name in sub.channels:
        subs = table.get(name)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del table[name]


class PendingSubscriber(Subscriber):
    """A subscriber of a broker fed by a pub/sub link: it buffers until it goes live."""

    __slots__ = ("buffer", "live")

    def __init__(self, channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        self.live = False
        # What the link brought before it went live, as the broker's entries.
        self.buffer: list[Any] = []


class PendingFanOut(LocalFanOut):
    """A :class:`LocalFanOut` fed by a pub/sub link, as the Redis brokers are.

    A new subscription waits in :attr:`_pending`, its subscriber buffering
    what the link brings (:meth:`_hold`), until its replay has been read;
    then it goes live (:meth:`_leave_pending`) and keeps what its replay did
    not have. Subclasses keep the subscribers they hand events to one by one
    elsewhere too, and extend :meth:`_unregister` and :meth:`_everyone`.
    """

    def __init__(self, queue_size: int, slow_consumer: Policies) -> None:
        super().__init__(queue_size, slow_consumer)
        self._pending: dict[str, set[Any]] = {}

    def _add_pending(self, sub: PendingSubscriber) -> None:
        """Register a new subscriber as pending; the lock is held."""
        pending = self._pending
        for name in sub.channels:
            channel_pending = pending.get(name)
            if channel_pending is None:
                channel_pending = pending[name] = set()
            channel_pending.add(sub)

    def _leave_pending(self, sub: PendingSubscriber) -> list[Any]:
        """Mark ``sub`` live, out of the pending sets; return its buffer. The lock is held."""
        buffer, sub.buffer = sub.buffer, []
        sub.live = True
        discard(self._pending, sub)
        return buffer

    def _hold(self, sub: PendingSubscriber, entry: Any, me: int) -> None:
        """Buffer ``entry`` for ``sub`` until it goes live; the lock is held.

        A subscriber whose hand-over takes so long that more than a couple
        of queues' worth piles up is dropped, as a slow one: memory stays bounded.
        """
        buffer = sub.buffer
        buffer.append(entry)
        if len(buffer) > max(2 * self._queue_size, 1000):
            self._end(sub, me, dropped=True)

    def _unregister(self, sub: Subscriber) -> None:
        super()._unregister(sub)
        discard(self._pending, sub)
        if isinstance(sub, PendingSubscriber):
            sub.buffer = []

    def _everyone(self) -> set[Subscriber]:
        everyone = super()._everyone()
        for channel_pending in self._pending.values():
            everyone |= channel_pending
        return everyone


class LocalSubscription:
    """A subscription served by a :class:`LocalFanOut`; see ``Subscription``.

    One greenlet iterates it (any thread, any hub); :meth:`close` may be
    called from anywhere. If it is garbage-collected without being closed,
    the broker releases it on its next call.
    """

    __slots__ = ("__weakref__", "_broker", "_queue", "_replay", "_reset", "_sub")

    def __init__(
        self, broker: LocalFanOut, sub: Subscriber, replay: list[Event], reset: bool
    ) -> None:
        self._broker = broker
        self._sub = sub
        # Events (the queue of a conflate subscriber, taken by _take, holds entries).
        self._queue: deque[Event] = sub.queue
        self._replay: deque[Event] = deque(replay)
        self._reset = reset

    def __repr__(self) -> str:
        state = "dropped" if self._sub.dropped else "closed" if self._sub.ended else "open"
        return f"<{type(self).__name__} {list(self._sub.channels)!r:.200} {state}>"

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

    @property
    def policy(self) -> str:
        """The slow-consumer policy it follows."""
        return self._sub.policy or DISCONNECT

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
        if self._sub.policy is not None:
            while True:
                if queue:
                    batch = self._take(1)
                    if batch:
                        return batch[0]
                if self._sub.ended:
                    raise StopIteration
                self._wait(None)
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
            if self._sub.policy is not None:
                if len(batch) < max_items and self._queue:
                    batch += self._take(max_items - len(batch))
                return batch
            pop = self._queue.popleft
            for _ in range(min(len(self._queue), max_items - len(batch))):
                batch.append(pop())
        except IndexError:
            pass  # closed meanwhile from another thread
        return batch

    def _take(self, max_items: int) -> list[Event]:
        """Take from a slow-consumer policy's queue, under the broker's lock."""
        broker = self._broker
        with broker._lock:
            return take(self._sub, max_items, broker._counters)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until an event is queued or the subscription ends.

        Returns ``False`` if ``timeout`` seconds passed first.
        """
        if self._replay or self._queue or self._sub.ended:
            return True
        return self._wait(timeout)

    def _wait(self, timeout: float | None) -> bool:
        sub = self._sub
        waker = current_waker()
        waiter: Waiter[Any] = Waiter(waker.hub)
        waker.enter()
        try:
            sub.interrupted = False
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

    def interrupt(self) -> None:
        """Make a :meth:`wait` in progress return now; see ``Subscription``."""
        sub = self._sub
        sub.interrupted = True
        wake(sub, get_ident())

    def set_sink(self, sink: Callable[[], bool] | None) -> None:
        """Let ``sink()`` take new events in the hub while :meth:`wait` waits.

        The rules are those of ``Subscription.set_sink``: called in the
        waiting greenlet's hub; ``True`` if it took the queued events (with
        :meth:`get_batch`), and the wait goes on; ``False`` wakes the waiter;
        it must not block or switch; an interrupt and the end of the
        subscription wake the waiter without asking it; ``None`` removes it.
        """
        self._sub.sink = sink

    def close(self) -> None:
        """End the subscription and release it; idempotent, callable from anywhere."""
        self._replay.clear()
        self._sub.sink = None
        self._broker._close_subscriber(self._sub)

    def __enter__(self) -> Self:
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
