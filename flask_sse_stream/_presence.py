"""Presence: who is subscribed to a channel right now, and join/leave events.

A stream of the channels blueprint may belong to an *identity*: the value
``@sse.identify`` returns, or the value ``@sse.authorize`` returned instead
of ``True`` (anything JSON-able, such as ``{"id": 7, "name": "Ada"}``). A
stream without one is anonymous: counted, never listed. Identities are
compared by their canonical JSON (:func:`identity_key`), so the same user
with three tabs, on two workers, is one member.

Each process keeps its own connections per channel and identity
(:class:`Tracker`) and applies the changes to a *store*:

* :class:`MemoryStore`, in this process, with the in-process broker;
* :class:`~flask_sse_stream._broker._presence_redis.RedisStore`, with the
  Redis broker: every worker holds a lease per channel, renewed a third of
  ``SSE_PRESENCE_TTL`` apart; a worker that dies without cleaning up loses
  its lease, and with it its members, at most ``SSE_PRESENCE_TTL`` seconds
  after its last renewal.

Join and leave events (``SSE_PRESENCE = ["room:*"]``) are decided by the
store, atomically, so each goes out once whatever the number of workers:
``sse-join`` when an identity's first connection arrives anywhere,
``sse-leave`` when its last one has been gone for ``SSE_PRESENCE_GRACE``
seconds (a reload, a second tab or a reconnect in between is neither). They
are published on the channel through the broker, so they are numbered,
ordered and replayed with the channel's other events.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import gevent
import gevent.event

from ._broker import Broker, BrokerClosedError, BrokerUnavailableError
from ._event import Event

__all__ = [
    "ANONYMOUS",
    "JOIN_EVENT",
    "LEAVE_EVENT",
    "MAX_IDENTITY",
    "Change",
    "MemoryStore",
    "Outcome",
    "Presence",
    "Store",
    "Tracker",
    "identity_key",
]

log = logging.getLogger("flask_sse_stream.presence")

JOIN_EVENT: Final = "sse-join"
"""The ``event`` type sent when an identity's first connection to a channel opens."""
LEAVE_EVENT: Final = "sse-leave"
"""The ``event`` type sent when an identity's last connection has been gone for the grace."""
MAX_IDENTITY: Final = 1024
"""Bytes an identity's JSON may take."""
ANONYMOUS: Final = ""
"""The key of connections without an identity (no JSON text is empty)."""


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is subscribed to a channel now: what :meth:`SSE.presence` returns."""

    channel: str
    """The channel asked about."""
    members: tuple[Any, ...]
    """Each identity once, however many connections, workers and hosts it has open."""
    connections: int
    """Streams open on the channel, identified or anonymous."""


def identity_key(identity: Any) -> str:
    """The canonical JSON of ``identity``: equal identities give equal keys.

    :raises TypeError: if ``identity`` cannot be encoded as JSON.
    :raises ValueError: if its JSON is longer than :data:`MAX_IDENTITY` bytes.
    """
    try:
        key = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            "a stream's identity (from @sse.identify or @sse.authorize) must be JSON-able, "
            f"such as {{'id': 7, 'name': 'Ada'}}: {exc}"
        ) from None
    if len(key.encode()) > MAX_IDENTITY:
        raise ValueError(
            f"a stream's identity takes {len(key.encode())} bytes of JSON; keep it under "
            f"{MAX_IDENTITY} (an id and a display name, not a profile)"
        )
    return key


@dataclass(frozen=True, slots=True)
class Change:
    """What one process changed on one channel, for :meth:`Store.apply`."""

    channel: str
    counts: Mapping[str, int]
    """Connections per identity key: added or removed, or all of this process's if ``fresh``."""
    announce: bool
    """The channel gets join and leave events."""
    gone: bool = False
    """This process has no connection left on the channel."""
    fresh: bool = False
    """``counts`` are this process's whole state on the channel, not changes."""


@dataclass(slots=True)
class Outcome:
    """What the store decided about one :class:`Change` (or a read, or a settle)."""

    joined: list[str] = field(default_factory=list)
    """Identity keys whose ``sse-join`` must be sent now."""
    absent: list[str] = field(default_factory=list)
    """Identity keys no connection holds any more: settle them after the grace."""
    left: list[str] = field(default_factory=list)
    """Identity keys whose ``sse-leave`` must be sent now."""
    lost: bool = False
    """This process had lost its lease: nothing was applied; send a fresh change."""


class Store(Protocol):
    """Where the connections of every process are counted."""

    leases: bool
    """Each process holds a lease per channel that :meth:`Tracker.renew` must renew."""

    def apply(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply ``changes``, atomically each; one :class:`Outcome` per change."""
        ...

    def settle(self, channel: str, key: str, announce: bool) -> Outcome:
        """Decide whether ``key``, absent for the grace, has left ``channel``."""
        ...

    def read(self, channel: str, announce: bool) -> tuple[dict[str, int], Outcome]:
        """Connections per identity key on ``channel`` in every process."""
        ...


class MemoryStore:
    """Counts in this process: the store for the in-process broker."""

    leases = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, Counter[str]] = {}
        self._announced: dict[str, set[str]] = {}

    def apply(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply ``changes``; see :class:`Store`."""
        outcomes = []
        with self._lock:
            for change in changes:
                outcome = Outcome()
                channel = change.channel
                totals = self._totals.setdefault(channel, Counter())
                for key, delta in change.counts.items():
                    before = totals[key]
                    after = before + delta
                    if after > 0:
                        totals[key] = after
                        if before <= 0 and key and change.announce:
                            announced = self._announced.setdefault(channel, set())
                            if key not in announced:
                                announced.add(key)
                                outcome.joined.append(key)
                    else:
                        totals.pop(key, None)
                        if before > 0 and key:
                            outcome.absent.append(key)
                if not totals:
                    del self._totals[channel]
                outcomes.append(outcome)
        return outcomes

    def settle(self, channel: str, key: str, announce: bool) -> Outcome:
        """Send ``key``'s leave if it is still absent; see :class:`Store`."""
        outcome = Outcome()
        with self._lock:
            if key in self._totals.get(channel, ()):
                return outcome
            announced = self._announced.get(channel)
            if announced is not None and key in announced:
                announced.discard(key)
                if not announced:
                    del self._announced[channel]
                outcome.left.append(key)
        return outcome

    def read(self, channel: str, announce: bool) -> tuple[dict[str, int], Outcome]:
        """Connections per identity key on ``channel``; see :class:`Store`."""
        with self._lock:
            return dict(self._totals.get(channel, {})), Outcome()


class Tracker:
    """This process's presence: its connections per channel and identity, kept in a store.

    With a store that needs no round trip (:class:`MemoryStore`) changes are
    applied at once; with Redis one greenlet applies them in batches (one
    round trip for every channel that changed meanwhile) and renews the
    process's leases.
    """

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        events: tuple[str, ...],
        grace: float,
        renew_every: float | None = None,
    ) -> None:
        self._store = store
        self._broker = broker
        self._patterns = events
        self._announces: dict[str, bool] = {}
        self._grace = grace
        self._renew_every = renew_every
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self.local: dict[str, Counter[str]] = {}
        """This process's connections per channel and identity key."""
        self._pending: dict[str, Counter[str]] = {}
        self._leased: set[str] = set()
        self._batched = store.leases
        self._wanted = gevent.event.Event()
        self._idle = gevent.event.Event()
        self._idle.set()
        self._flusher: gevent.Greenlet[[], None] | None = None
        self._renewer: gevent.Greenlet[[], None] | None = None
        self._timers: set[threading.Timer] = set()
        self.closed = False

    def announces(self, channel: str) -> bool:
        """Whether ``channel`` gets join and leave events (``SSE_PRESENCE`` patterns)."""
        answer = self._announces.get(channel)
        if answer is None:
            answer = any(fnmatch.fnmatchcase(channel, p) for p in self._patterns)
            if len(self._announces) < 10_000:
                self._announces[channel] = answer
        return answer

    # Connections.

    def enter(self, channels: Sequence[str], key: str) -> Callable[[], None]:
        """Count a stream on ``channels`` as ``key``; return the function that uncounts it.

        The returned function may be called any number of times, from
        anywhere: only the first call counts.
        """
        self._change(channels, key, 1)
        token = [True]

        def leave() -> None:
            try:
                token.pop()
            except IndexError:
                return
            self._change(channels, key, -1)

        return leave

    def _change(self, channels: Sequence[str], key: str, delta: int) -> None:
        with self._lock:
            if self.closed:
                return
            for channel in channels:
                counts = self.local.setdefault(channel, Counter())
                counts[key] += delta
                if counts[key] <= 0:
                    del counts[key]
                    if not counts:
                        del self.local[channel]
                self._pending.setdefault(channel, Counter())[key] += delta
        self._kick()

    def _kick(self) -> None:
        if not self._batched:
            self.flush()
            return
        self._idle.clear()
        self._wanted.set()
        if self._flusher is None or self._flusher.dead:
            self._flusher = gevent.spawn(self._flush_forever)
        if self._renewer is None and self._renew_every is not None:
            self._renewer = gevent.spawn(self._renew_forever)

    def _flush_forever(self) -> None:
        while not self.closed:
            self._wanted.wait()
            self._wanted.clear()
            try:
                self.flush()
            except BrokerClosedError:
                return
            except BrokerUnavailableError as exc:
                log.warning("Could not update presence in the broker, retrying: %s", str(exc))
                gevent.sleep(1.0)
                self._wanted.set()
                continue
            with self._lock:
                if not self._pending:
                    self._idle.set()

    def _renew_forever(self) -> None:
        assert self._renew_every is not None
        while not self.closed:
            gevent.sleep(self._renew_every)
            self.renew()

    def renew(self) -> None:
        """Renew this process's leases on every channel it holds."""
        with self._lock:
            for channel in self._leased:
                self._pending.setdefault(channel, Counter())
        self._kick()

    def flush(self) -> None:
        """Apply what changed to the store, then send what it decided.

        :raises BrokerUnavailableError: if the store cannot be reached; what
            was not applied is applied again, whole, by the next flush.
        """
        with self._flushing:
            while True:
                with self._lock:
                    batch, self._pending = self._pending, {}
                    changes = self._changes(batch)
                if not changes:
                    return
                try:
                    outcomes = self._store.apply(changes)
                except BaseException:
                    with self._lock:
                        for change in changes:
                            # Applied or not, nobody knows: send it whole next time.
                            self._leased.discard(change.channel)
                            self._pending.setdefault(change.channel, Counter())
                    raise
                with self._lock:
                    for change, outcome in zip(changes, outcomes, strict=True):
                        if outcome.lost:
                            self._leased.discard(change.channel)
                            self._pending.setdefault(change.channel, Counter())
                        elif change.gone:
                            self._leased.discard(change.channel)
                        else:
                            self._leased.add(change.channel)
                for change, outcome in zip(changes, outcomes, strict=True):
                    self._follow(change.channel, outcome)

    def _changes(self, batch: dict[str, Counter[str]]) -> list[Change]:
        """The changes to send for ``batch``; the lock is held."""
        changes = []
        leases = self._store.leases
        for channel, deltas in batch.items():
            announce = self.announces(channel)
            mine = self.local.get(channel)
            if leases and channel not in self._leased:
                # The store has nothing of ours here that we can trust: send it all.
                if mine:
                    changes.append(Change(channel, dict(mine), announce, fresh=True))
                continue
            counts = {key: delta for key, delta in deltas.items() if delta}
            if counts or leases:
                changes.append(Change(channel, counts, announce, gone=not mine))
        return changes

    def _follow(self, channel: str, outcome: Outcome) -> None:
        """Send the joins and leaves the store decided; schedule the settles."""
        for key in outcome.joined:
            self._announce(channel, JOIN_EVENT, key)
        for key in outcome.left:
            self._announce(channel, LEAVE_EVENT, key)
        if outcome.absent and self.announces(channel):
            for key in outcome.absent:
                if self._grace == 0:
                    self._settle(channel, key)
                else:
                    self._settle_later(channel, key)

    def _settle_later(self, channel: str, key: str) -> None:
        # A timer, not gevent.spawn_later: with the werkzeug server the stream
        # that left ran in a thread whose hub ends with it.
        def settle() -> None:
            self._timers.discard(timer)
            self._settle(channel, key)

        timer = threading.Timer(self._grace, settle)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    def _settle(self, channel: str, key: str) -> None:
        if self.closed:
            return
        try:
            outcome = self._store.settle(channel, key, True)
        except (BrokerUnavailableError, BrokerClosedError) as exc:
            log.warning("Could not settle a presence leave on %s: %s", channel, str(exc))
            return
        self._follow(channel, outcome)

    def _announce(self, channel: str, kind: str, key: str) -> None:
        try:
            self._broker.publish(channel, Event(json.loads(key), event=kind))
        except (BrokerUnavailableError, BrokerClosedError) as exc:
            log.warning("Could not send %s on %s: %s", kind, channel, str(exc))

    # Questions.

    def presence(self, channel: str, timeout: float = 5.0) -> Presence:
        """Who is on ``channel`` in every process, this one's latest changes included."""
        if self._batched:
            self._idle.wait(timeout)
        totals, outcome = self._store.read(channel, self.announces(channel))
        self._follow(channel, outcome)
        members = tuple(json.loads(key) for key in sorted(totals) if key != ANONYMOUS)
        return Presence(channel, members, sum(totals.values()))

    def close(self) -> None:
        """Stop the greenlets and timers (the store's leases then run out)."""
        self.closed = True
        for timer in list(self._timers):
            timer.cancel()
        for greenlet in (self._flusher, self._renewer):
            if greenlet is not None:
                greenlet.kill(block=False)
