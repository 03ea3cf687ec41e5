"""Slow-consumer policies: what a subscriber's queue does when the subscriber falls behind.

Each channel follows one policy (``SSE_SLOW_CONSUMER``, the brokers'
``slow_consumer`` argument):

* ``disconnect`` (the default): a subscriber whose queue already holds
  ``queue_size`` events when one more arrives is dropped; it reconnects and
  replays. Its queue is a plain ``deque``: this module is not on its path.
* ``drop-oldest``: the queue keeps the newest ``queue_size`` events; the
  oldest make room. Where events were dropped the subscriber receives one
  ``sse-gap`` event (:data:`GAP_EVENT`) per gap, whose data is
  ``{"skipped": <count>}`` and whose id is that of the newest event dropped,
  so a client that reconnects after it does not get those events back.
* ``conflate``: events are published with a *key* (``sse.publish(...,
  key="AAPL")``; no key is one key for the whole channel). A subscriber
  that keeps up gets every event. Once its queue holds ``queue_size`` events
  it is *lagging*: its queue then holds at most one event per key, the
  newest, in the order the keys last changed, until it has read them all.
  Every key's last value arrives.

A subscription of several channels whose policies differ follows the first
of ``disconnect``, ``drop-oldest``, ``conflate`` that one of its channels
has: events one of its channels may not lose are never lost.

Replay follows the policy too (:func:`replay`): a reconnecting client of a
``conflate`` channel gets the latest event per key since its last id, of a
``drop-oldest`` channel at most ``queue_size`` events after a gap marker.

Memory per subscriber is O(``queue_size``) (``drop-oldest``) or
O(``queue_size`` + keys) (``conflate``) whatever the publish rate. What the
queues skip is counted in :class:`Counters`, which the broker's stats show.

The queues are filled under the broker's lock (by the fan-out) and emptied
by the subscriber's greenlet, possibly in another thread; so their
``popleft`` takes the same lock (a ``deque`` alone is safe without it, a
gap or a mapping is not). ``__len__``, ``append``, ``offer`` and ``clear``
run with the lock held.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any, Final

from .._errors import InvalidEventError
from .._event import Event

__all__ = [
    "CONFLATE",
    "DISCONNECT",
    "DROP_OLDEST",
    "GAP_EVENT",
    "POLICIES",
    "ConflateQueue",
    "Counters",
    "DropOldestQueue",
    "Policies",
    "check_key",
    "gap_event",
    "replay",
]

DISCONNECT: Final = "disconnect"
DROP_OLDEST: Final = "drop-oldest"
CONFLATE: Final = "conflate"
POLICIES: Final = (DISCONNECT, DROP_OLDEST, CONFLATE)
"""The policies, strictest first: a mixed subscription takes the first its channels have."""

GAP_EVENT: Final = "sse-gap"
"""The ``event`` type that tells a ``drop-oldest`` subscriber how many events it missed."""

MAX_KEY_LENGTH: Final = 256
_CACHE_SIZE: Final = 4096


def check_key(key: Any) -> str | None:
    """Return ``key`` if it can be a conflation key (``None`` or a short one-line ``str``).

    :raises InvalidEventError: saying what a key may be.
    """
    if key is None:
        return None
    if (
        not isinstance(key, str)
        or not key
        or len(key) > MAX_KEY_LENGTH
        or "\n" in key
        or "\r" in key
        or "\0" in key
    ):
        raise InvalidEventError(
            f"key must be None or a str of 1 to {MAX_KEY_LENGTH} characters without line "
            f"breaks or NUL, got {key!r:.80}"
        )
    return key


def gap_event(skipped: int, last_id: str | None) -> Event:
    """The event that tells a subscriber ``skipped`` events, up to ``last_id``, were dropped."""
    return Event(json.dumps({"skipped": skipped}), event=GAP_EVENT, id=last_id)


class Policies:
    """Which policy each channel follows.

    :param rules: one policy for every channel (a ``str``), or a mapping of
        channel names or ``fnmatch`` patterns (``"ticker:*"``) to policies.
        A channel's own name wins, then the first pattern that matches in
        the mapping's order; a channel nothing matches follows ``disconnect``.
    :raises ValueError: naming the rule that is not a pattern and a policy.
    """

    __slots__ = ("_cache", "_exact", "_patterns", "default", "rules")

    def __init__(self, rules: str | Mapping[str, str] | None = None) -> None:
        if rules is None:
            rules = {}
        elif isinstance(rules, str):
            rules = {"*": rules}
        if not isinstance(rules, Mapping):
            raise ValueError(
                'slow-consumer rules are a policy ("conflate") or a mapping of channel '
                f'patterns to policies ({{"ticker:*": "conflate"}}), got {rules!r:.80}'
            )
        for pattern, policy in rules.items():
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"a channel pattern is a non-empty str, got {pattern!r:.80}")
            if policy not in POLICIES:
                raise ValueError(
                    f"the policy of {pattern!r:.80} must be one of "
                    f"{', '.join(map(repr, POLICIES))}, got {policy!r:.80}"
                )
        self.rules: dict[str, str] = dict(rules)
        self._exact = {name: p for name, p in self.rules.items() if not _is_pattern(name)}
        self._patterns = [(name, p) for name, p in self.rules.items() if _is_pattern(name)]
        self.default = DISCONNECT
        self._cache: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Policies({self.rules!r})"

    def __bool__(self) -> bool:
        """False if every channel follows ``disconnect``."""
        return any(policy != DISCONNECT for policy in self.rules.values())

    def of(self, channel: str) -> str:
        """The policy ``channel`` follows."""
        policy = self._cache.get(channel)
        if policy is None:
            policy = self._exact.get(channel)
            if policy is None:
                policy = next(
                    (p for pattern, p in self._patterns if fnmatchcase(channel, pattern)),
                    self.default,
                )
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()  # channel names come from clients: stay bounded
            self._cache[channel] = policy
        return policy

    def of_subscription(self, channels: Iterable[str]) -> str:
        """The policy of a subscription to ``channels``: the strictest of theirs."""
        return POLICIES[min(POLICIES.index(self.of(name)) for name in channels)]


def _is_pattern(name: str) -> bool:
    return any(char in name for char in "*?[")


class Counters:
    """What the policies' queues skipped, for the broker's stats (changed under its lock)."""

    __slots__ = ("conflated", "dropped", "gaps")

    def __init__(self) -> None:
        self.conflated = 0
        """Queued events replaced by a newer one of the same key."""
        self.dropped = 0
        """Queued events dropped to make room for newer ones."""
        self.gaps = 0
        """Gap markers queued (one per run of dropped events)."""


Entry = tuple[Hashable, Event]
"""What the fan-out offers a policy queue: ``((channel, key), event)``, built once per publish."""


class _Gap:
    __slots__ = ("count", "last_id")

    def __init__(self) -> None:
        self.count = 0
        self.last_id: str | None = None


class DropOldestQueue:
    """A subscriber's queue under ``drop-oldest``: the newest events, and a gap marker."""

    __slots__ = ("_counters", "_events", "_gap", "_lock")

    def __init__(self, lock: Any, counters: Counters) -> None:
        self._lock = lock
        self._counters = counters
        self._events: deque[Event] = deque()
        # The events dropped so far come before every event queued.
        self._gap: _Gap | None = None

    def __len__(self) -> int:
        return len(self._events) + (self._gap is not None)

    def __bool__(self) -> bool:
        return bool(self._events) or self._gap is not None

    def append(self, event: Event) -> None:
        self._events.append(event)

    def offer(self, entry: Entry, limit: int) -> None:
        """Queue ``entry``'s event, dropping the oldest if ``limit`` events are queued."""
        events = self._events
        if len(events) >= limit:
            dropped = events.popleft()
            gap = self._gap
            if gap is None:
                gap = self._gap = _Gap()
                self._counters.gaps += 1
            gap.count += 1
            gap.last_id = dropped.id
            self._counters.dropped += 1
        events.append(entry[1])

    def popleft(self) -> Event:
        """The next event: the gap marker first, if events were dropped."""
        with self._lock:
            gap = self._gap
            if gap is not None:
                self._gap = None
                return gap_event(gap.count, gap.last_id)
            return self._events.popleft()

    def clear(self) -> None:
        self._events.clear()
        self._gap = None


class ConflateQueue:
    """A subscriber's queue under ``conflate``: every event, or one per key once it lags."""

    __slots__ = ("_counters", "_fifo", "_latest", "_lock")

    def __init__(self, lock: Any, counters: Counters) -> None:
        self._lock = lock
        self._counters = counters
        self._fifo: deque[Entry] = deque()
        # While lagging: the newest event per key, in the order keys last changed.
        self._latest: OrderedDict[Hashable, Event] | None = None

    def __len__(self) -> int:
        latest = self._latest
        return len(self._fifo) if latest is None else len(latest)

    def __bool__(self) -> bool:
        return bool(self._fifo) or bool(self._latest)

    def append(self, event: Event) -> None:
        self.offer(((None, object()), event), 1 << 62)  # a key of its own: never conflated

    def offer(self, entry: Entry, limit: int) -> None:
        """Queue ``entry``; past ``limit`` queued, keep only the newest event per key."""
        latest = self._latest
        if latest is None:
            fifo = self._fifo
            if len(fifo) < limit:
                fifo.append(entry)
                return
            latest = self._latest = OrderedDict()
            for queued in fifo:
                self._put(latest, queued)
            fifo.clear()
        self._put(latest, entry)

    def _put(self, latest: OrderedDict[Hashable, Event], entry: Entry) -> None:
        key, event = entry
        if key in latest:
            latest[key] = event
            latest.move_to_end(key)
            self._counters.conflated += 1
        else:
            latest[key] = event

    def popleft(self) -> Event:
        """The next event: in order while it keeps up, else the key that changed least recently."""
        with self._lock:
            latest = self._latest
            if latest is None:
                return self._fifo.popleft()[1]
            event = latest.popitem(last=False)[1]
            if not latest:
                self._latest = None  # caught up: every event again
            return event

    def clear(self) -> None:
        self._fifo.clear()
        self._latest = None


def replay(
    policy: str, entries: Sequence[tuple[Event, Hashable]], queue_size: int, counters: Counters
) -> list[Event]:
    """What a subscription that follows ``policy`` replays of ``entries`` (in publish order).

    ``entries`` pairs each event with its conflation key, ``(channel, key)``.
    ``disconnect`` replays every event; ``drop-oldest`` the newest
    ``queue_size`` of them, after a gap marker for the rest; ``conflate`` the
    newest event per key, in the order the keys last changed.
    """
    if policy == CONFLATE:
        latest: dict[Hashable, Event] = {}
        for event, key in entries:
            if latest.pop(key, None) is not None:
                counters.conflated += 1
            latest[key] = event
        return list(latest.values())
    if policy == DROP_OLDEST and len(entries) > queue_size:
        skipped = len(entries) - queue_size
        counters.dropped += skipped
        counters.gaps += 1
        last_skipped = entries[skipped - 1][0]
        return [gap_event(skipped, last_skipped.id)] + [event for event, _ in entries[skipped:]]
    return [event for event, _ in entries]
