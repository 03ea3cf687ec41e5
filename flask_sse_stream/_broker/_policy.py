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

Every subscriber's queue is a plain ``deque``, filled under the broker's
lock: the fan-out appends to it while it has room, whatever the policy, so
a subscriber that keeps up costs the same under every policy (a
``conflate`` subscriber's queue holds ``(key, event)`` entries, built once
per publish). Only a full queue takes the policy's path
(:func:`overflow`), and a policy's subscriber takes its events under the
broker's lock (:func:`take`): its gap and its map of keys change with the
queue.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Final

from .._errors import InvalidEventError
from .._event import Event

if TYPE_CHECKING:
    from ._wakeup import Subscriber

__all__ = [
    "CONFLATE",
    "DISCONNECT",
    "DROP_OLDEST",
    "GAP_EVENT",
    "POLICIES",
    "Counters",
    "Entry",
    "Policies",
    "check_key",
    "gap_event",
    "overflow",
    "replay",
    "take",
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
        """Events skipped for a newer one of the same key (when skipped, see :func:`take`)."""
        self.dropped = 0
        """Queued events dropped to make room for newer ones."""
        self.gaps = 0
        """Gap markers queued (one per run of dropped events)."""


Entry = tuple[Hashable, Event]
"""What a ``conflate`` subscriber's queue holds: ``((channel, key), event)``, built once
per publish and shared by every such subscriber."""


def overflow(sub: Subscriber, item: Any, limit: int, counters: Counters) -> None:
    """Queue ``item`` for ``sub``, whose queue holds ``limit`` items (or that lags).

    ``item`` is an event (``drop-oldest``) or an :data:`Entry` (``conflate``).
    The broker's lock is held. The fan-out appends to a queue that has room
    itself, at the cost of a ``deque.append``, whatever the policy; this is
    the path of a subscriber that fell behind.

    ``drop-oldest`` drops the oldest queued event and counts it in the
    subscriber's gap (``[count, id of the last dropped]``), which comes
    before every queued event. ``conflate`` starts *lagging*: ``sub.latest``
    maps each key to its newest queued entry, and an entry that is not its
    key's newest is skipped when taken (:func:`take`); stale entries are
    swept out once they are as many as the rest, so the queue stays within
    ``2 * (limit + keys)`` entries.
    """
    queue = sub.queue
    if sub.policy == DROP_OLDEST:
        dropped = queue.popleft()
        gap = sub.gap
        if gap is None:
            gap = sub.gap = [0, None]
            counters.gaps += 1
        gap[0] += 1
        gap[1] = dropped.id
        counters.dropped += 1
        queue.append(item)
        return
    latest = sub.latest
    if latest is None:
        latest = sub.latest = {}
        for entry in queue:
            latest[entry[0]] = entry
    latest[item[0]] = item
    queue.append(item)
    if len(queue) > 2 * (limit + len(latest)):
        live = [entry for entry in queue if latest.get(entry[0], entry) is entry]
        counters.conflated += len(queue) - len(live)
        queue.clear()
        queue.extend(live)


def take(sub: Subscriber, max_items: int, counters: Counters) -> list[Event]:
    """Take up to ``max_items`` events of a policy's queue; the broker's lock is held.

    ``drop-oldest``: the gap event first, if events were dropped. ``conflate``:
    the entries' events, skipping (and counting) those a newer one of the
    same key superseded while the subscriber lagged.
    """
    queue = sub.queue
    batch: list[Event] = []
    if sub.policy == DROP_OLDEST:
        gap = sub.gap
        if gap is not None:
            sub.gap = None
            batch.append(gap_event(gap[0], gap[1]))
        pop = queue.popleft
        for _ in range(min(len(queue), max_items - len(batch))):
            batch.append(pop())
        return batch
    latest = sub.latest
    if latest is None:
        pop = queue.popleft
        return [pop()[1] for _ in range(min(len(queue), max_items))]
    while queue and len(batch) < max_items:
        entry = queue.popleft()
        key = entry[0]
        if latest.get(key, entry) is entry:
            latest.pop(key, None)
            batch.append(entry[1])
        else:
            counters.conflated += 1
    if not queue:
        sub.latest = None  # caught up: every event again
    return batch


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
