"""The in-process broker: channels, bounded history and fan-out in one process.

:class:`MemoryBroker` follows the contract of :mod:`flask_sse_stream._broker.base`.
It serves every subscriber of one process, whichever thread and gevent hub
the subscriber runs in, and accepts events from any greenlet or thread.

How it is built, and why:

* The subscriber queues, the fan-out and the wake-ups across hubs are the
  ones every broker shares (:mod:`flask_sse_stream._broker._local` and
  :mod:`flask_sse_stream._broker._wakeup`, whose docstrings say how they work).
* One real (never monkey-patched) lock guards the broker's state. A publish
  appends to the channel's history and to every subscriber's queue inside
  it, and a subscribe computes its replay and registers the subscriber
  inside it, so the hand-over from replay to live has no gap and no
  duplicate, and every subscriber sees events in id order.
* Ids are ``<epoch>-<n>``: ``epoch`` is random per broker, so an id from an
  earlier process is unknown here; ``n`` is one sequence for all channels,
  in base 36. Replay from ``n`` takes, for each requested channel, the tail
  of its history after ``n`` and merges the tails by sequence.
"""

from __future__ import annotations

import heapq
import secrets
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .._event import Event
from ._local import (
    LocalFanOut,
    LocalSubscription,
    base36,
    check_publish,
    check_sizes,
    check_subscribe,
    parse_id,
    seq_of,
)
from ._policy import Policies
from ._wakeup import Subscriber, get_ident
from .base import RESET_EVENT, Broker, BrokerClosedError, BrokerStats, Subscription

__all__ = ["MemoryBroker", "MemorySubscription"]


class _History:
    __slots__ = ("entries", "evicted")

    def __init__(self, size: int) -> None:
        # (n, event, key)
        self.entries: deque[tuple[int, Event, str | None]] = deque(maxlen=size)
        self.evicted = 0
        """The sequence number of the newest event that fell out."""


class MemoryBroker(LocalFanOut):
    """The default broker: keeps everything in this process.

    :param history_size: events kept per channel for replay
        (``SSE_HISTORY_SIZE``); ``0`` keeps none, so every reconnect with a
        last id gets the reset event.
    :param queue_size: live events a subscription may have waiting before it
        is dropped as slow (``SSE_QUEUE_SIZE``), or before its policy drops
        or conflates events. The replay a subscription starts with does not
        count.
    :param slow_consumer: the slow-consumer policy of every channel (a
        ``str``), or of channels by name or pattern (``SSE_SLOW_CONSUMER``,
        see :class:`~flask_sse_stream._broker._policy.Policies`).

    A channel's history lives as long as the broker (it is bounded by
    ``history_size``); its subscriber set only as long as it has subscribers.
    """

    def __init__(
        self,
        history_size: int = 1000,
        queue_size: int = 1000,
        *,
        slow_consumer: str | Mapping[str, str] | None = None,
    ) -> None:
        check_sizes(history_size, queue_size)
        super().__init__(queue_size, Policies(slow_consumer))
        self._history_size = history_size
        self._epoch = base36(secrets.randbits(40))
        self._seq = 0
        self._histories: dict[str, _History] = {}

    @property
    def history_size(self) -> int:
        """Events kept per channel."""
        return self._history_size

    def __repr__(self) -> str:
        return (
            f"<MemoryBroker epoch={self._epoch} published={self._published} "
            f"subscriptions={self._open}{' closed' if self._closed else ''}>"
        )

    # Publishing.

    def publish(self, channel: str, event: Event, key: str | None = None) -> Event:
        """Store ``event`` in ``channel``'s history and deliver it; see :class:`Broker`."""
        check_publish(channel, event, key)
        me = get_ident()
        with self._lock:
            if self._closed:
                raise BrokerClosedError("publish() on a closed broker")
            if self._orphans:
                self._release_orphans(me)
            seq = self._seq = self._seq + 1
            if event.id is None:
                event = Event(event.data, event.event, f"{self._epoch}-{base36(seq)}", event.retry)
            history = self._histories.get(channel)
            if history is None:
                history = self._histories[channel] = _History(self._history_size)
            entries = history.entries
            if len(entries) == self._history_size:
                history.evicted = entries[0][0] if entries else seq
            entries.append((seq, event, key))
            self._published += 1
            subscribers = self._subscribers.get(channel)
            if subscribers:
                self._fan_out(subscribers, event, me, channel, key)
        return event

    # Subscribing.

    def subscribe(self, channels: Sequence[str], last_id: str | None = None) -> MemorySubscription:
        """Subscribe to ``channels`` from ``last_id``; see :class:`Broker`."""
        names = check_subscribe(channels, last_id)
        last_seq = None if last_id is None else self._parse(last_id)
        sub = self._new_subscriber(Subscriber(names))
        me = get_ident()
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
                    position = f"{self._epoch}-{base36(self._seq)}"
                    replay.append(Event("", event=RESET_EVENT, id=position))
                    reset = True
                    self._resets += 1
                else:
                    replay = self._replay_by_policy(sub, tail)
            self._register(sub)
            self._open += 1
        return MemorySubscription(self, sub, replay, reset)

    def _parse(self, last_id: str) -> int | None:
        """The sequence number ``last_id`` names, or ``None`` if it is not one of ours."""
        parsed = parse_id(last_id)
        if parsed is None or parsed[0] != self._epoch:
            return None
        return parsed[1]

    def _tail(
        self, names: tuple[str, ...], last_seq: int
    ) -> list[tuple[Event, tuple[str, str | None]]] | None:
        """The events of ``names`` after ``last_seq``, in order, with their keys.

        ``None``: cannot say.
        """
        if last_seq > self._seq:
            return None
        runs: list[list[tuple[int, Event, tuple[str, str | None]]]] = []
        for name in names:
            history = self._histories.get(name)
            if history is None:
                continue
            if history.evicted > last_seq:
                return None
            run: list[tuple[int, Event, tuple[str, str | None]]] = []
            for n, event, key in reversed(history.entries):
                if n <= last_seq:
                    break
                run.append((n, event, (name, key)))
            if run:
                run.reverse()
                runs.append(run)
        if not runs:
            return []
        merged = runs[0] if len(runs) == 1 else heapq.merge(*runs, key=seq_of)
        return [(event, key) for _, event, key in merged]

    # Ending.

    def close(self) -> None:
        """End every subscription, forget every channel; idempotent."""
        me = get_ident()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._end_everyone(me)
            self._histories.clear()

    def stats(self) -> BrokerStats:
        """Return a snapshot of the counters; see :class:`BrokerStats`."""
        with self._lock:
            return BrokerStats(
                **self._local_stats(),
                history=sum(len(h.entries) for h in self._histories.values()),
            )


class MemorySubscription(LocalSubscription):
    """A subscription to a :class:`MemoryBroker`; see :class:`Subscription`.

    Built by :meth:`MemoryBroker.subscribe`. One greenlet iterates it (any
    thread, any hub); :meth:`close` may be called from anywhere. If it is
    garbage-collected without being closed, the broker releases it on its
    next call.
    """

    __slots__ = ()


if TYPE_CHECKING:
    # mypy checks that the classes follow the contract.
    _broker: Broker = MemoryBroker()
    _subscription: Subscription = _broker.subscribe(["c"])
