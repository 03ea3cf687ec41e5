"""The cluster broker: channels spread over the shards of a Redis Cluster.

:class:`ClusterBroker` follows the contract of :mod:`flask_sse_stream._broker.base`
(and passes the same contract tests), with one difference a single Redis
does not have: live events of *different* channels may reach a subscriber
in another order than they were published, since they travel through
different shards; the events of one channel always come in order, and a
stream of several channels resumes exactly from its ``Last-Event-ID``
(see ids below).

* Each channel lives in its own hash slot: its history (a stream), its
  position, and its shard channel (:mod:`~flask_sse_stream._broker._cluster_wire`).
  One Lua script, run on the primary that holds the slot, numbers the event,
  stores it and publishes it with ``SPUBLISH``; by default it is then
  acknowledged by a replica (``WAIT``) before ``publish`` returns, so a
  failover of that shard does not lose it.
* Each process holds one pub/sub connection per shard it needs
  (:mod:`~flask_sse_stream._broker._cluster_link`), whatever the number of
  channels and clients; it follows a channel whose slot moves and a shard
  whose primary fails over, and fills the gap from the channel's stream.
* Ids: a channel's events are numbered by a hybrid clock (see
  ``_cluster_wire``), so an id is short (``<epoch>-<n>``), increases, and
  the events one process publishes are numbered in the order it published
  them, across channels. A subscription to several channels gives its
  events ids that name its position in each channel
  (``<epoch>-<top>.<d1>.<d2>``): a resume replays each channel from where
  the client was, with no gap and no duplicate, however the shards'
  events interleaved. A plain ``<epoch>-<n>`` resumes every channel from
  ``n``.
* Slow-consumer policies (``slow_consumer``, ``SSE_SLOW_CONSUMER``) work as
  on the Redis broker, live and in a replay; the key travels in the event's
  bytes. A subscriber of several channels gets its own ids before its
  policy chooses, so a gap's id, or a kept event's, resumes after the
  events skipped before it.

The process must be monkey-patched by gevent, as for the Redis broker.
Redis should keep these keys (persistence on, ``maxmemory-policy
noeviction``): a shard that loses its data loses its channels' history.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from gevent import monkey
from redis.connection import Connection

from .._event import Event, JSONDumps
from ._cluster_link import Links
from ._cluster_wire import (
    Address,
    ChannelState,
    ClusterKeys,
    ClusterStore,
    Topology,
    cluster_settings,
    parse_position,
    vector_id,
)
from ._local import (
    LocalSubscription,
    PendingFanOut,
    PendingSubscriber,
    base36,
    check_publish,
    check_sizes,
    check_subscribe,
    discard,
)
from ._policy import Policies
from ._redis_home import Home, Pool
from ._redis_wire import decode_or_skip, encode
from ._wakeup import Subscriber, get_ident, wake
from .base import (
    RESET_EVENT,
    Broker,
    BrokerClosedError,
    BrokerStats,
    BrokerUnavailableError,
    Subscription,
)

__all__ = ["ClusterBroker", "ClusterSubscription"]

log = logging.getLogger(__name__)

# redis-py's connection has no annotations; strict mypy would flag every call.
_Connection: Any = Connection

_NOT_PATCHED: Final = (
    "ClusterBroker needs a process monkey-patched by gevent, as RedisBroker does: serve "
    "the app with `flask-sse-stream serve MODULE:APP` or `gunicorn -k gevent`, or call "
    "`from gevent import monkey; monkey.patch_all()` first thing in your entry point. "
    "(To publish from a process without gevent, use flask_sse_stream.Publisher.)"
)


_Entry = tuple[str, int, Event, str | None]
"""An event as the links bring it: ``(channel, n, event, key)``."""


class _ClusterSubscriber(PendingSubscriber):
    """A subscriber, with its position in each channel; its buffer holds :data:`_Entry`\\ s."""

    __slots__ = ("multi", "order", "positions", "settles", "snaps")

    def __init__(self, channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        self.multi = len(channels) > 1
        self.order = tuple(sorted(channels))
        # The newest n given to it, per channel; a smaller or equal one is
        # not given again.
        self.positions: dict[str, int] = dict.fromkeys(channels, 0)
        # Per channel, what its snapshot covered, as soon as it is read.
        self.snaps: dict[str, int] = {}
        # Once its hand-over is done, a subscriber of one channel moves to
        # the plain fan-out with its next event.
        self.settles = False


class ClusterBroker(PendingFanOut):
    """A broker shared through a Redis Cluster (Redis 7+); see the module docstring.

    :param url: ``redis+cluster://[[user]:password@]host:port[,host:port...]``:
        one or more nodes to learn the cluster from. A publish waits until one
        replica of the shard holds the event (``?wait=N``: N replicas;
        ``?wait=0``: none, for a cluster without replicas).
    :param history_size: events kept per channel for replay.
    :param queue_size: live events a local subscription may have waiting
        before it is dropped as slow, or before its policy drops or
        conflates events.
    :param slow_consumer: the slow-consumer policy of every channel (a
        ``str``), or of channels by name or pattern (``SSE_SLOW_CONSUMER``,
        see :class:`~flask_sse_stream._broker._policy.Policies`), as on
        the Redis broker. Every process sharing the channels should use the same.
    :param key_prefix: prefix of every key and shard channel (no braces).
    :param max_connections: connections per primary for publishing and reading.
    :param timeout: seconds a command, a connection or a subscription's
        confirmation may take before :class:`BrokerUnavailableError`.
    :param max_backoff: the longest wait, in seconds, between two attempts to
        subscribe a channel again after its shard failed or moved.
    :param health_check_interval: seconds between ``PING``\\ s on idle pub/sub
        connections; three intervals without a reply mean one is dead.
    :param json_dumps: encodes event data that is not a ``str``.
    :raises RuntimeError: if this process is not monkey-patched by gevent.
    """

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        queue_size: int = 1000,
        key_prefix: str = "sse:",
        max_connections: int = 8,
        timeout: float = 5.0,
        max_backoff: float = 2.0,
        health_check_interval: float = 5.0,
        json_dumps: JSONDumps = json.dumps,
        slow_consumer: str | Mapping[str, str] | None = None,
    ) -> None:
        check_sizes(history_size, queue_size)
        policies = Policies(slow_consumer)
        if not monkey.is_module_patched("socket"):
            raise RuntimeError(_NOT_PATCHED)
        super().__init__(queue_size, policies)
        self._history_size = history_size
        self._keys = ClusterKeys(key_prefix)
        self._timeout = float(timeout)
        self._dumps = json_dumps
        settings = cluster_settings(url, timeout=timeout, socket_timeout=timeout)
        pubsub = cluster_settings(url, timeout=timeout, socket_timeout=3 * health_check_interval)

        def executor(address: Address) -> Any:
            make = functools.partial(
                _Connection,
                host=address[0],
                port=address[1],
                client_name="flask-sse-stream:pool",
                **settings.connection,
            )
            return Pool(make, max_connections, timeout, f"{address[0]}:{address[1]}")

        def connect(address: Address, name: str, options: dict[str, Any]) -> Any:
            return _Connection(host=address[0], port=address[1], client_name=name, **options)

        self._topology = Topology(
            settings.seeds,
            executor,
            functools.partial(connect, name="flask-sse-stream:ask", options=settings.connection),
        )
        self._store = ClusterStore(
            self._topology,
            self._keys,
            history_size,
            replicas=settings.replicas,
            timeout=self._timeout,
        )
        self._home = Home(self._timeout)
        self._links = Links(
            topology=self._topology,
            store=self._store,
            keys=self._keys,
            home=self._home,
            connect=functools.partial(
                connect,
                name="flask-sse-stream:pubsub",
                options={**pubsub.connection, "socket_keepalive": True},
            ),
            max_backoff=float(max_backoff),
            health_interval=float(health_check_interval),
            channels=self._channels,
            base=self._base,
            on_event=self._on_event,
            on_lost=self._on_lost,
        )
        # Live subscribers whose events are checked one by one (several
        # channels, or not past their snapshot yet).
        self._checked: dict[str, set[_ClusterSubscriber]] = {}
        # The newest n this process has seen: what it publishes next is numbered above.
        self._clock = 0

    @property
    def history_size(self) -> int:
        """Events kept per channel."""
        return self._history_size

    @property
    def key_prefix(self) -> str:
        """The prefix of every key and shard channel."""
        return self._keys.prefix

    def __repr__(self) -> str:
        return (
            f"<ClusterBroker prefix={self._keys.prefix!r} "
            f"subscriptions={self._open}{' closed' if self._closed else ''}>"
        )

    # Publishing.

    def publish(self, channel: str, event: Event, key: str | None = None) -> Event:
        """Store ``event`` in ``channel``'s stream and publish it; see :class:`Broker`.

        :raises BrokerUnavailableError: if the cluster cannot be reached in
            time, or no replica acknowledged the event; it may or may not
            have been published.
        :raises BrokerClosedError: after :meth:`close`.
        """
        check_publish(channel, event, key)
        if self._closed:
            raise BrokerClosedError("publish() on a closed broker")
        return self._home.run(self._publish, channel, event, key)

    def _publish(self, channel: str, event: Event, key: str | None) -> Event:
        epoch, n = self._store.publish(channel, encode(event, self._dumps, key), self._clock + 1)
        self._clock = max(self._clock, n)
        self._published += 1
        if event.id is None:
            event = Event(event.data, event.event, f"{epoch}-{base36(n)}", event.retry)
        return event

    # Subscribing.

    def subscribe(self, channels: Sequence[str], last_id: str | None = None) -> ClusterSubscription:
        """Subscribe to ``channels`` from ``last_id``; see :class:`Broker`.

        :raises BrokerUnavailableError: if the cluster cannot be reached in time.
        :raises BrokerClosedError: after :meth:`close`.
        """
        names = check_subscribe(channels, last_id)
        if self._closed:
            raise BrokerClosedError("subscribe() on a closed broker")
        return self._home.run(self._subscribe, names, last_id)

    def _subscribe(self, names: tuple[str, ...], last_id: str | None) -> ClusterSubscription:
        sub = self._new_subscriber(_ClusterSubscriber(names))
        with self._lock:
            if self._closed:
                raise BrokerClosedError("subscribe() on a closed broker")
            if self._orphans:
                self._release_orphans(self._home.thread)
            self._add_pending(sub)
            self._open += 1
        try:
            replay, reset = self._hand_over(sub, last_id)
        except BaseException:
            self._close_subscriber(sub)
            raise
        return ClusterSubscription(self, sub, replay, reset)

    def _hand_over(self, sub: _ClusterSubscriber, last_id: str | None) -> tuple[list[Event], bool]:
        """Subscribe on the shards, read the replay, go live; return the replay."""
        names = sub.channels
        deadline = time.monotonic() + self._timeout
        store = self._store
        epoch = store.epoch()
        after: dict[str, int] | None = None
        if last_id is not None:
            parsed = parse_position(last_id, len(names))
            if parsed is not None and parsed[0] == epoch:
                after = dict(zip(sub.order, parsed[1], strict=True))
        rehomed = self._links.rehomed
        seen = {name: rehomed.get(name, 0) for name in names}
        self._links.ensure(names, deadline)
        states: dict[str, ChannelState] = {}
        for name in names:
            state = states[name] = store.read(name, after[name] if after is not None else None)
            # At once (no switch since the read): a gap fill starts from it.
            sub.snaps[name] = state.last
        tails = self._tails(states, after)
        wanted = tails is not None
        replay: list[Event] = []
        reset = False
        with self._lock:
            if self._closed:
                raise BrokerClosedError("subscribe() on a closed broker")
            positions = sub.positions
            if last_id is not None and not wanted:
                for name in names:
                    positions[name] = states[name].last
                replay = [self._reset_event(sub, epoch)]
                reset = True
                self._resets += 1
            elif after is not None:
                positions.update(after)
                # Every event with the id it has for this subscriber, then the
                # policy's choice of them: a kept event's id covers those skipped.
                entries: list[tuple[Event, tuple[str, str | None]]] = []
                for n, name, blob in heapq.merge(*(tails or [])):
                    decoded = self._decode(blob, epoch, n)
                    if decoded is not None:
                        positions[name] = n
                        event, key = decoded
                        entries.append((self._for(sub, event, epoch, n), (name, key)))
                replay = self._replay_by_policy(sub, entries)
                for name in names:
                    positions[name] = max(positions[name], states[name].last)
            else:
                for name in names:
                    positions[name] = states[name].last
            if any(rehomed.get(name, 0) != seen[name] for name in names):
                # A channel's shard failed or moved while this subscription
                # was being made: a gap fill may have started before its
                # snapshot. Rare; the client comes back (503, Retry-After).
                raise BrokerUnavailableError(
                    "a channel moved to another Redis node while subscribing; retry"
                )
            if not sub.ended:
                self._go_live(sub, epoch)
            sub.settles = True
        return replay, reset

    def _tails(
        self, states: dict[str, ChannelState], after: dict[str, int] | None
    ) -> list[list[tuple[int, str, bytes]]] | None:
        """Each channel's events to replay; ``None`` if one's history lost some."""
        if after is None:
            return None
        tails = []
        for name, state in states.items():
            tail = state.tail(after[name], self._history_size)
            if tail is None:
                return None
            if tail:
                tails.append([(n, name, blob) for n, blob in tail])
        return tails

    def _reset_event(self, sub: _ClusterSubscriber, epoch: str) -> Event:
        return Event("", event=RESET_EVENT, id=self._id_of(sub, epoch))

    def _id_of(self, sub: _ClusterSubscriber, epoch: str) -> str:
        positions = sub.positions
        if sub.multi:
            return vector_id(epoch, [positions[name] for name in sub.order])
        return f"{epoch}-{base36(positions[sub.channels[0]])}"

    def _for(self, sub: _ClusterSubscriber, event: Event, epoch: str, n: int) -> Event:
        """``event`` as ``sub`` gets it: with its own position as the id, if it has several."""
        if not sub.multi or event.id != f"{epoch}-{base36(n)}":
            return event
        return Event(event.data, event.event, self._id_of(sub, epoch), event.retry)

    def _decode(self, blob: bytes, epoch: str, n: int) -> tuple[Event, str | None] | None:
        return decode_or_skip(blob, f"{epoch}-{base36(n)}", log)

    def _go_live(self, sub: _ClusterSubscriber, epoch: str) -> None:
        """Move ``sub`` from pending to live, with what it buffered; the lock is held."""
        me = self._home.thread
        buffer = self._leave_pending(sub)
        for name in sub.channels:
            self._checked.setdefault(name, set()).add(sub)
        for entry in buffer:
            self._give(sub, entry, me)

    # What the links bring, in the home hub.

    def _channels(self) -> set[str]:
        with self._lock:
            if self._orphans:
                self._release_orphans(self._home.thread)
            return self._subscribers.keys() | self._checked.keys() | self._pending.keys()

    def _base(self, name: str) -> int | None:
        """Where a gap fill of ``name`` starts when the link delivered nothing on it yet.

        The oldest position of its subscribers (none of them has taken the
        plain fan-out yet: that needs an event from the link).
        """
        with self._lock:
            positions = [sub.positions[name] for sub in self._checked.get(name, ())]
            for sub in self._pending.get(name, ()):
                if name in sub.snaps:
                    positions.append(sub.snaps[name])
            return min(positions) if positions else None

    def _on_event(self, name: str, n: int, blob: bytes) -> None:
        epoch = self._store.epoch()
        decoded = self._decode(blob, epoch, n)
        if decoded is None:
            return
        event, key = decoded
        self._clock = max(self._clock, n)
        me = self._home.thread
        with self._lock:
            if self._orphans:
                self._release_orphans(me)
            settled = self._subscribers.get(name)
            if settled:
                self._fan_out(settled, event, me, name, key)
            entry = (name, n, event, key)
            checked = self._checked.get(name)
            if checked:
                for sub in list(checked):
                    self._give(sub, entry, me)
            pending = self._pending.get(name)
            if pending:
                for sub in list(pending):
                    self._hold(sub, entry, me)

    def _give(self, sub: _ClusterSubscriber, entry: _Entry, me: int) -> None:
        """Queue ``entry``'s event for ``sub`` by its policy unless it had it; the lock is held."""
        name, n, event, key = entry
        if sub.ended or n <= sub.positions[name]:
            return
        sub.positions[name] = n
        if sub.multi:
            event = self._for(sub, event, self._store.epoch(), n)
        if not self._offer(sub, event, name, key):
            self._end(sub, me, dropped=True)
            return
        if not sub.multi and sub.settles:
            # Past its snapshot: from now on it takes the channel's fan-out as it is.
            discard(self._checked, sub)
            self._register(sub)
        wake(sub, me)

    def _on_lost(self, name: str, position: int) -> None:
        """``name``'s gap cannot be filled: its subscribers get the reset event."""
        epoch = self._store.epoch()
        me = self._home.thread
        with self._lock:
            subs = [*self._checked.get(name, ()), *self._subscribers.get(name, ())]
            for sub in subs:
                assert isinstance(sub, _ClusterSubscriber)
                if sub.ended:
                    continue
                sub.positions[name] = max(sub.positions[name], position)
                # Its own key (as the Redis broker's gap fill gives it): a
                # lagging conflated queue keeps it beside every channel's keys.
                if not self._offer(sub, self._reset_event(sub, epoch), "", None):
                    self._end(sub, me, dropped=True)
                    continue
                self._resets += 1
                wake(sub, me)

    # Ending.

    def _unregister(self, sub: Subscriber) -> None:
        super()._unregister(sub)
        discard(self._checked, sub)
        tables = (self._subscribers, self._checked, self._pending)
        released = any(not any(name in table for table in tables) for name in sub.channels)
        if released and not self._closed:
            self._links.request_release()

    def _everyone(self) -> set[Subscriber]:
        everyone = super()._everyone()
        for subs in self._checked.values():
            everyone |= subs
        return everyone

    def close(self) -> None:
        """End every subscription, close every connection; idempotent."""
        me = get_ident()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._end_everyone(me)
        self._home.call(self._links.close)
        self._home.call(self._topology.close)

    def stats(self) -> BrokerStats:
        """This process's counters; see :class:`BrokerStats` (``history`` is 0)."""
        with self._lock:
            stats = self._local_stats()
            per_channel: dict[str, int] = {}
            for table in (self._subscribers, self._checked):
                for name, subs in table.items():
                    per_channel[name] = per_channel.get(name, 0) + len(subs)
            stats["subscribers"] = per_channel
            return BrokerStats(**stats)

    def shard_links(self) -> int:
        """Open pub/sub connections (one per shard the process needs), for tests and metrics."""
        return self._links.count()


class ClusterSubscription(LocalSubscription):
    """A subscription to a :class:`ClusterBroker`; see :class:`Subscription`."""

    __slots__ = ()


if TYPE_CHECKING:
    # mypy checks that the classes follow the contract.
    _broker: Broker = ClusterBroker("redis+cluster://h:1")
    _subscription: Subscription = _broker.subscribe(["c"])
    _state: ChannelState
