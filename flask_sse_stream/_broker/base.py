"""The broker contract: publish to channels, subscribe from a last event id.

A broker carries events from publishers to the subscriptions of a channel and
keeps a bounded history per channel so that a client that reconnects with
the id of the last event it saw gets what it missed. Every broker (the
in-process :class:`~flask_sse_stream._broker.memory.MemoryBroker`, the Redis
broker) follows the rules written here and passes the same contract tests
(``tests/broker/test_contract.py``).

The rules, in one place:

* **Ids.** An event published without an id gets one from the broker: unique
  and increasing across all channels of the broker, short, printable ASCII
  (safe to come back in a cross-origin ``Last-Event-ID`` header). An id also
  names the broker's *state*: an id issued by another broker instance (an
  earlier process, a wiped store) is unknown here. An event published with
  its own id keeps it; such ids cannot be replayed from.
* **Replay.** ``subscribe(channels, last_id)`` with ``last_id`` not ``None``
  first yields every event of every requested channel published after
  ``last_id``, merged in publish order, then goes live. Nothing is missed and
  nothing comes twice at the hand-over, even while publishers keep publishing
  from other greenlets or threads. ``last_id`` need not belong to one of the
  requested channels: positions are global to the broker.
* **Reset.** When the broker cannot honour ``last_id`` (unknown, malformed,
  issued by another instance, or older than what the history of a requested
  channel still holds) the subscription yields exactly one *reset event*
  instead of a replay: ``Event(data="", event=RESET_EVENT, id=<position>)``,
  then goes live. ``<position>`` is an id naming the broker's position at
  the moment of subscribing: a client that later reconnects with it replays
  exactly what followed. A browser's ``EventSource`` delivers it to
  ``addEventListener("sse-reset", ...)``: the page should refetch its state.
  A resume that silently skips events never happens.
* **Slow subscribers.** Each subscription has a bounded queue. A publisher
  never blocks on a subscriber. What happens when a queue is full follows
  the *slow-consumer policy* of the subscription's channels (see
  :mod:`flask_sse_stream._broker._policy`). Under ``disconnect``, the
  default, a subscription whose queue is full when an event arrives is
  *dropped*: its queue is freed, its iteration ends, it is counted in
  :attr:`BrokerStats.dropped_slow`, and the client is expected to reconnect
  with its last id and replay. Under ``drop-oldest`` the oldest queued event
  makes room and the subscription yields one ``sse-gap`` event per run of
  dropped events; under ``conflate`` a lagging subscription keeps only the
  newest event per key (``publish(..., key=)``). The replay follows the
  policy too. Other subscriptions are unaffected.
* **Sinks.** A subscription may hand the events that arrive while its
  owner waits to a sink, called in the hub, instead of waking the owner;
  the rules are those of :meth:`Subscription.set_sink`.
* **Release.** Closing a subscription (or its being dropped) removes every
  reference the broker holds to it; a channel whose last subscription leaves
  keeps no subscriber structure (its history, which is bounded, may stay).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, runtime_checkable

from .._errors import SSEError
from .._event import Event

__all__ = [
    "RESET_EVENT",
    "Broker",
    "BrokerClosedError",
    "BrokerStats",
    "Subscription",
]

RESET_EVENT = "sse-reset"
"""The ``event`` type of the reset event: the client's last id could not be
replayed from, so the page should refetch its state. Its ``data`` is empty
and its ``id`` is the broker's position when the subscription started."""


class BrokerUnavailableError(SSEError, RuntimeError):
    """The broker's backend (Redis) could not be reached, or refused the command, in time.

    A publish that raises this may or may not have been stored: publish
    again if the event must get through (it then gets a new id). A
    subscribe that raises this subscribed nothing; the channels blueprint
    answers it with 503 and ``Retry-After``.
    """


class BrokerClosedError(SSEError, RuntimeError):
    """The broker has been closed; it neither publishes nor subscribes any more."""


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """A snapshot of a broker's counters.

    The counters (``published`` to ``resets``) count from the broker's
    creation; the others are the state at the moment of the snapshot.
    """

    subscribers: Mapping[str, int] = field(default_factory=dict)
    """Open subscriptions per channel; only channels that have some."""
    subscriptions: int = 0
    """Open subscriptions (one subscribing several channels counts once)."""
    published: int = 0
    """Events published."""
    delivered: int = 0
    """Live events put in subscriptions' queues (one per subscription per event)."""
    replayed: int = 0
    """Events replayed to subscriptions that came back with a last id."""
    resets: int = 0
    """Reset events sent instead of a replay."""
    dropped_slow: int = 0
    """Subscriptions dropped because their queue was full (``disconnect``)."""
    conflated: int = 0
    """Events a ``conflate`` subscription skipped for a newer one of the same key
    (once per subscription), live or in a replay. Counted when skipped: as the
    subscription reads past them, or when a lagging queue is swept."""
    dropped: int = 0
    """Events a ``drop-oldest`` subscription skipped (once per subscription), live or
    in a replay."""
    gaps: int = 0
    """``sse-gap`` events queued: one per run of events a subscription skipped."""
    queued: int = 0
    """Events waiting in subscriptions' queues right now."""
    history: int = 0
    """Events held in the channels' histories right now."""


@runtime_checkable
class Subscription(Protocol):
    """A live feed of the events of one or more channels.

    Iterating blocks cooperatively (the calling greenlet waits; the others of
    its hub run) and yields :class:`~flask_sse_stream.Event` objects: first
    the replay or the reset event, if a last id was given, then live events.
    The same event object goes to every subscription, so its bytes are
    encoded once. Iteration ends when the subscription is closed, when the
    broker closes, or when the subscription is dropped for being slow (then
    :attr:`dropped` is true).

    One greenlet iterates a subscription; :meth:`close` may be called from
    anywhere. A subscription is also a context manager that closes it.
    """

    @property
    def channels(self) -> tuple[str, ...]:
        """The channels subscribed to, without duplicates, in the order given."""
        ...

    @property
    def dropped(self) -> bool:
        """True once the subscription was dropped because its queue overflowed."""
        ...

    @property
    def closed(self) -> bool:
        """True once the subscription has ended, for whatever reason."""
        ...

    @property
    def reset(self) -> bool:
        """True if the subscription started with a reset event instead of a replay."""
        ...

    @property
    def policy(self) -> str:
        """The slow-consumer policy it follows: ``disconnect``, ``drop-oldest`` or ``conflate``."""
        ...

    def __iter__(self) -> Iterator[Event]: ...

    def __next__(self) -> Event:
        """Return the next event, waiting for one; ``StopIteration`` once ended."""
        ...

    def get_batch(self, max_items: int) -> list[Event]:
        """Take up to ``max_items`` queued events without waiting.

        Returns an empty list when nothing is queued (or the subscription has
        ended: check :attr:`closed`). For coalescing many events into one write.
        """
        ...

    def wait(self, timeout: float | None = None) -> bool:
        """Wait cooperatively until an event is queued or the subscription ends.

        Returns ``True`` if :meth:`get_batch` or ``next()`` will not block,
        ``False`` if ``timeout`` seconds passed first.
        """
        ...

    def interrupt(self) -> None:
        """Make a :meth:`wait` in progress return now, even with nothing queued.

        For whoever serves the subscription and must also react to other
        things (a disconnect, a heartbeat, a shutdown). Call it from the
        subscription's own thread; it never blocks. A sink (see
        :meth:`set_sink`) is not asked: the waiter wakes.
        """
        ...

    def set_sink(self, sink: Callable[[], bool] | None) -> None:
        """Let ``sink()`` take newly arrived events in the hub, instead of waking the waiter.

        For a server that can write events to its client without switching
        to the greenlet that waits (one publish can then reach many clients
        in one pass of the hub). The rules:

        * ``sink`` is called in the hub of the greenlet that waits in
          :meth:`wait` (or in ``next()``) when events arrive for this
          subscription while it waits; never while nobody waits, never in a
          publisher's thread. One call may find the events of several
          publishes queued.
        * It returns ``True`` if it took the events itself (with
          :meth:`get_batch`): the waiter sleeps on. It returns ``False`` to
          wake the waiter instead, with what is queued left for it. If events
          are still queued after a ``True`` (it left some, or more arrived
          meanwhile), the waiter wakes anyway: nothing stays queued with
          nobody awake.
        * It never blocks and never switches greenlets: it runs in the hub.
        * :meth:`interrupt` and the end of the subscription (:meth:`close`,
          a drop, the broker closing) wake the waiter without asking it.
        * ``None`` removes the sink; setting another replaces it.
          :meth:`close` removes it too: the subscription keeps no reference
          to it.
        """
        ...

    def close(self) -> None:
        """End the subscription and release it; idempotent, callable from anywhere."""
        ...

    def __enter__(self) -> Subscription: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Broker(Protocol):
    """Carries events from publishers to subscriptions; see the module docstring."""

    def publish(self, channel: str, event: Event, key: str | None = None) -> Event:
        """Store ``event`` in the channel's bounded history and deliver it.

        Every current subscription of ``channel`` gets it. If ``event.id`` is
        ``None`` the broker assigns one (see "Ids" above) and returns the new
        event as stored; otherwise it returns ``event`` itself. Never blocks on
        a slow subscriber. Safe to call from any greenlet and from any OS
        thread, with or without a gevent hub. ``key`` names what the event is
        the latest value of, for channels that ``conflate`` (``None``: one
        key for the whole channel); it is kept with the event in the history.

        :raises BrokerClosedError: after :meth:`close`.
        :raises InvalidEventError: if ``key`` is not ``None`` or a short
            one-line ``str``.
        """
        ...

    def subscribe(self, channels: Sequence[str], last_id: str | None = None) -> Subscription:
        """Subscribe to ``channels``, replaying what followed ``last_id``.

        ``channels`` is a non-empty sequence of names (not a single ``str``);
        checking that names are well-formed and allowed is the caller's job.
        ``last_id`` is the client's ``Last-Event-ID``, or ``None`` to start
        live with no replay and no reset. Any ``str`` is accepted: one the
        broker cannot replay from yields the reset event.

        :raises BrokerClosedError: after :meth:`close`.
        """
        ...

    def close(self) -> None:
        """End every subscription and release everything; idempotent."""
        ...

    def stats(self) -> BrokerStats:
        """Return a snapshot of the broker's counters and state."""
        ...
