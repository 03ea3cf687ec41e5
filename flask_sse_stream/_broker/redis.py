"""The Redis broker: every worker process and host shares channels through Redis.

:class:`RedisBroker` follows the contract of :mod:`flask_sse_stream._broker.base`
(and passes the same contract tests as the in-process broker). An event
published in any process, by a broker or by a :class:`~flask_sse_stream.Publisher`,
reaches the subscriptions of every process; a client that reconnects to
another process replays from the same history.

It is built of three parts, each in its own module:

* what Redis holds (a stream per channel, one counter numbering the events
  of every channel, an epoch) and the script that publishes, shared with
  ``Publisher``: :mod:`~flask_sse_stream._broker._redis_wire`;
* where commands run (the hub of the thread that built the broker; a call
  from another thread is handed to it) and the pool of connections for
  publishing and replays: :mod:`~flask_sse_stream._broker._redis_home`;
* the one pub/sub connection per process that brings every event, with
  reconnection and gap filling: :mod:`~flask_sse_stream._broker._redis_link`.

This module is the broker itself: the local subscriptions, fed by the link
through the same queues and wake-ups as the in-process broker
(:mod:`flask_sse_stream._broker._local`), so an event is decoded once per
process and every subscriber gets the same object; and the hand-over from
replay to live. The number of connections does not depend on the number of
clients.

A subscription with a last id is registered first, buffering what the
pub/sub connection brings; once Redis has confirmed the channels (a
``PING`` on that connection answers after the ``SUBSCRIBE``), one ``MULTI``
reads the position and every requested stream after the last id, and the
subscription goes live when the pub/sub connection has passed that
position (a second ``PING``), keeping only the buffered events the replay
did not hold: no gap, no duplicate.

The process must be monkey-patched by gevent (redis-py uses the standard
``socket`` module); the broker refuses to start otherwise.

With a ``history_ttl`` a channel's keys expire once it has had no publish
and no subscriber for that long (between 1.25 and 1.5 times it: each
process sets the expiry of its subscribed channels again every quarter of
it, see :mod:`~flask_sse_stream._broker._redis_wire`).

Redis should not evict these keys (``maxmemory-policy noeviction``; a
``volatile-*`` policy would evict the histories that have an expiry before
their time); every process and publisher sharing a ``key_prefix`` should
use the same ``history_size`` and ``history_ttl``.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent import monkey

from .._event import Event, JSONDumps
from ._local import (
    LocalSubscription,
    PendingFanOut,
    PendingSubscriber,
    base36,
    check_publish,
    check_sizes,
    check_subscribe,
    check_ttl,
    parse_id,
    seq_of,
)
from ._policy import Policies
from ._redis_home import Home, Pool
from ._redis_link import Gap, Link
from ._redis_wire import (
    Keys,
    Snapshot,
    Store,
    close_sentinels,
    connection_factory,
    decode_or_skip,
    encode,
    replicas_to_wait,
    where,
)
from ._wakeup import Subscriber, get_ident, wake
from .base import (
    RESET_EVENT,
    Broker,
    BrokerClosedError,
    BrokerStats,
    BrokerUnavailableError,
    Subscription,
)

__all__ = ["BrokerUnavailableError", "RedisBroker", "RedisSubscription"]

log = logging.getLogger(__name__)

_NOT_PATCHED: Final = (
    "RedisBroker needs a process monkey-patched by gevent: redis-py talks to Redis "
    "through the standard socket module, and unpatched sockets would block every "
    "stream of the process while one waits for Redis. Serve the app with "
    "`flask-sse-stream serve MODULE:APP` or `gunicorn -k gevent` (both patch for you), "
    "or call `from gevent import monkey; monkey.patch_all()` first thing in your "
    "entry point, before anything else is imported. (To publish from a process "
    "without gevent, such as a Celery worker, use flask_sse_stream.Publisher.)"
)


class _RedisSubscriber(PendingSubscriber):
    """A subscriber that buffers what arrives before it goes live.

    Its buffer holds ``(epoch generation, n, event, channel, key)``; at the
    hand-over it keeps those after ``snap``.
    """

    __slots__ = ("snap",)

    def __init__(self, channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        # (epoch generation, n): what its replay covered; None: no replay.
        self.snap: tuple[int, int] | None = None


_brokers: weakref.WeakSet[RedisBroker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for broker in list(_brokers):
        broker._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedisBroker(PendingFanOut):
    """A broker shared through Redis by every process and host; see the module docstring.

    :param url: ``redis://[[user]:password@]host[:port][/db]``,
        ``rediss://`` (TLS), ``unix:///path/to/socket[?db=N]``, or
        ``redis+sentinel://[[user]:password@]host:26379,host2:26379/service[/db]``
        for a primary that Redis Sentinel fails over: every connection asks
        the sentinels where the primary is, and a publish waits until one
        replica holds the event (``?wait=N``: N replicas, ``?wait=0``: none;
        ``?sentinel_password=`` if the sentinels want one).
    :param history_size: events kept per channel for replay (Redis stream
        ``MAXLEN``; Redis may keep a few more, never fewer).
    :param queue_size: live events a local subscription may have waiting
        before it is dropped as slow, or before its policy drops or
        conflates events.
    :param slow_consumer: the slow-consumer policy of every channel (a
        ``str``), or of channels by name or pattern (``SSE_SLOW_CONSUMER``,
        see :class:`~flask_sse_stream._broker._policy.Policies`). Every
        process sharing the channels should use the same.
    :param key_prefix: prefix of every key and pub/sub channel, so that
        several apps can share one Redis.
    :param history_ttl: seconds a channel's history is kept in Redis once it
        has no publish and no subscriber (key expiry); ``None``: for ever.
    :param max_connections: connections for publishing and replays; the
        process also holds one pub/sub connection.
    :param timeout: seconds a command, a connection or a subscription's
        confirmation may take before :class:`BrokerUnavailableError`.
    :param max_backoff: the longest wait, in seconds, between two attempts
        to reconnect the pub/sub connection.
    :param health_check_interval: seconds between ``PING``\\ s on the idle
        pub/sub connection; three intervals without a reply mean it is dead.
    :param json_dumps: encodes event data that is not a ``str``.
    :raises RuntimeError: if this process is not monkey-patched by gevent.

    Nothing connects until the first publish or subscribe. :meth:`stats`
    counts this process only; ``history`` is not counted (it is in Redis).
    """

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        queue_size: int = 1000,
        key_prefix: str = "sse:",
        history_ttl: float | None = None,
        max_connections: int = 8,
        timeout: float = 5.0,
        max_backoff: float = 2.0,
        health_check_interval: float = 5.0,
        json_dumps: JSONDumps = json.dumps,
        slow_consumer: str | Mapping[str, str] | None = None,
    ) -> None:
        check_sizes(history_size, queue_size)
        ttl = check_ttl(history_ttl)
        policies = Policies(slow_consumer)
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(f"max_connections must be a whole number, got {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be 1 or more, got {max_connections!r}")
        for name, value in (
            ("timeout", timeout),
            ("max_backoff", max_backoff),
            ("health_check_interval", health_check_interval),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not monkey.is_module_patched("socket"):
            raise RuntimeError(_NOT_PATCHED)
        super().__init__(queue_size, policies)
        self._history_size = history_size
        self._keys = Keys(key_prefix)
        self._timeout = float(timeout)
        self._dumps = json_dumps
        cls, kwargs = connection_factory(
            url, timeout=timeout, socket_timeout=timeout, name="flask-sse-stream:pool"
        )
        self._where = where(kwargs)
        self._pool = Pool(functools.partial(cls, **kwargs), max_connections, timeout, self._where)
        self._store = Store(
            self._pool.execute,
            self._keys,
            history_size,
            ttl,
            replicas=replicas_to_wait(url),
            timeout=self._timeout,
        )
        self._history_ttl = ttl
        # Channels whose last local subscriber left since the keeper's last pass.
        self._left: set[str] = set()
        self._keeper: gevent.Greenlet[[], None] | None = None
        sub_cls, sub_kwargs = connection_factory(
            url,
            timeout=timeout,
            # Silence for three health-check intervals means the link is dead.
            socket_timeout=3 * health_check_interval,
            name="flask-sse-stream:pubsub",
        )
        # Where every Redis command runs.
        self._home = Home(self._timeout)
        self._sentinel_kwargs = (kwargs, sub_kwargs)
        self._is_forked = False
        self._link = Link(
            connect=functools.partial(sub_cls, socket_keepalive=True, **sub_kwargs),
            store=self._store,
            home=self._home,
            where=self._where,
            max_backoff=float(max_backoff),
            health_interval=float(health_check_interval),
            channels=self._channels,
            on_event=self._on_event,
            on_confirmed=self._on_confirmed,
            on_gap=self._fill,
        )
        # Subscribers waiting for a PING generation to go live.
        self._finalize: deque[tuple[int, _RedisSubscriber]] = deque()
        _brokers.add(self)

    @property
    def history_size(self) -> int:
        """Events kept per channel."""
        return self._history_size

    @property
    def key_prefix(self) -> str:
        """The prefix of every key and pub/sub channel."""
        return self._keys.prefix

    def __repr__(self) -> str:
        return (
            f"<RedisBroker {self._where} prefix={self._keys.prefix!r} "
            f"subscriptions={self._open}{' closed' if self._closed else ''}>"
        )

    def _check_usable(self, what: str) -> None:
        if self._is_forked:
            raise RuntimeError(
                "this RedisBroker was made before the process forked and belongs to the "
                "parent; make the broker in each process (after the fork)"
            )
        if self._closed:
            raise BrokerClosedError(f"{what}() on a closed broker")

    # Publishing.

    def publish(self, channel: str, event: Event, key: str | None = None) -> Event:
        """Store ``event`` in ``channel``'s stream and publish it; see :class:`Broker`.

        Waits for Redis (one round trip).

        :raises BrokerUnavailableError: if Redis cannot be reached in time;
            the event may or may not have been published.
        :raises BrokerClosedError: after :meth:`close`.
        """
        check_publish(channel, event, key)
        self._check_usable("publish")
        return self._home.run(self._publish, channel, event, key)

    def _publish(self, channel: str, event: Event, key: str | None) -> Event:
        if self._orphans:
            with self._lock:
                self._release_orphans(self._home.thread)
        epoch, n = self._store.publish(channel, encode(event, self._dumps, key))
        self._published += 1
        if event.id is None:
            event = Event(event.data, event.event, f"{epoch}-{base36(n)}", event.retry)
        return event

    # Subscribing.

    def subscribe(self, channels: Sequence[str], last_id: str | None = None) -> RedisSubscription:
        """Subscribe to ``channels`` from ``last_id``; see :class:`Broker`.

        Waits for Redis: one round trip on the pub/sub connection, plus one
        to read the replay when ``last_id`` is given.

        :raises BrokerUnavailableError: if Redis cannot be reached in time.
        :raises BrokerClosedError: after :meth:`close`.
        """
        names = check_subscribe(channels, last_id)
        self._check_usable("subscribe")
        return self._home.run(self._subscribe, names, last_id)

    def _subscribe(self, names: tuple[str, ...], last_id: str | None) -> RedisSubscription:
        link = self._link
        link.start()
        if self._history_ttl is not None and self._keeper is None:
            self._keeper = gevent.spawn(self._keep_histories)
        sub = self._new_subscriber(_RedisSubscriber(names))
        me = self._home.thread
        with self._lock:
            if self._closed:
                raise BrokerClosedError("subscribe() on a closed broker")
            if self._orphans:
                self._release_orphans(me)
            self._add_pending(sub)
            self._open += 1
            generation = link.request()
            if last_id is None:
                # Live from the confirmation on: what came before it was
                # published before (or while) we subscribed.
                self._finalize.append((generation, sub))
        link.kick()
        replay: list[Event] = []
        reset = False
        try:
            deadline = time.monotonic() + self._timeout
            link.wait_confirmed(generation, deadline)
            if last_id is not None:
                replay, reset = self._hand_over(sub, last_id, deadline)
        except BaseException:
            self._close_subscriber(sub)
            raise
        return RedisSubscription(self, sub, replay, reset)

    def _hand_over(
        self, sub: _RedisSubscriber, last_id: str, deadline: float
    ) -> tuple[list[Event], bool]:
        """Read the replay for ``sub``, then let the reader take it live from there."""
        link = self._link
        parsed = parse_id(last_id)
        names = sub.channels
        while True:
            after = parsed[1] if parsed is not None else 0
            snapshot = self._store.snapshot(
                names if parsed is not None else (), after, returning=True
            )
            with self._lock:
                if self._closed:
                    raise BrokerClosedError("subscribe() on a closed broker")
                if snapshot.epoch == link.epoch:
                    replay, reset = self._replay(sub, snapshot, parsed)
                    if not sub.ended:
                        sub.snap = (link.generation, snapshot.seq)
                        self._finalize.append((link.request(), sub))
                    break
                # Redis lost its data and the reader has not seen it yet:
                # have it look, then read again.
                generation = link.request_recovery()
            link.kick()
            link.wait_confirmed(generation, deadline)
        link.kick()
        return replay, reset

    def _replay(
        self, sub: Subscriber, snapshot: Snapshot, parsed: tuple[str, int] | None
    ) -> tuple[list[Event], bool]:
        """The replay (or the reset event) for ``parsed``, by ``sub``'s policy; the lock is held."""
        epoch = snapshot.epoch
        if parsed is not None and parsed[0] == epoch and parsed[1] <= snapshot.seq:
            runs: list[list[tuple[int, bytes, str]]] = []
            for index, name in enumerate(sub.channels):
                tail = snapshot.tail(index, parsed[1], self._history_size)
                if tail is None:
                    break
                if tail:
                    runs.append([(n, blob, name) for n, blob in tail])
            else:
                merged = runs[0] if len(runs) == 1 else list(heapq.merge(*runs, key=seq_of))
                return self._replay_by_policy(sub, self._decode_all(merged, epoch)), False
        self._resets += 1
        return [Event("", event=RESET_EVENT, id=f"{epoch}-{base36(snapshot.seq)}")], True

    def _decode_all(
        self, entries: list[tuple[int, bytes, str]], epoch: str
    ) -> list[tuple[Event, tuple[str, str | None]]]:
        events = []
        for n, blob, name in entries:
            decoded = decode_or_skip(blob, f"{epoch}-{base36(n)}", log)
            if decoded is not None:
                events.append((decoded[0], (name, decoded[1])))
        return events

    # What the link brings, in the home hub.

    def _channels(self) -> set[str]:
        """The channels that local subscriptions want."""
        with self._lock:
            if self._orphans:
                self._release_orphans(self._home.thread)
            return self._subscribers.keys() | self._pending.keys()

    def _on_event(
        self, channel: str, generation: int, n: int, event: Event, key: str | None
    ) -> None:
        me = self._home.thread
        with self._lock:
            if self._orphans:
                self._release_orphans(me)
            subscribers = self._subscribers.get(channel)
            if subscribers:
                self._fan_out(subscribers, event, me, channel, key)
            pending = self._pending.get(channel)
            if pending:
                entry = (generation, n, event, channel, key)
                for sub in list(pending):
                    self._hold(sub, entry, me)

    def _on_confirmed(self, generation: int) -> None:
        me = self._home.thread
        with self._lock:
            finalize = self._finalize
            while finalize and finalize[0][0] <= generation:
                sub = finalize.popleft()[1]
                if not sub.ended:
                    self._go_live(sub, me)

    def _go_live(self, sub: _RedisSubscriber, me: int) -> None:
        """Move ``sub`` from pending to the fan-out sets; the lock is held."""
        buffer = self._leave_pending(sub)
        self._register(sub)
        snap = sub.snap
        if snap is None or not buffer:
            return
        generation, seq = snap
        for entry in buffer:
            after = entry[0] > generation or (entry[0] == generation and entry[1] > seq)
            if after and not self._offer(sub, entry[2], entry[3], entry[4]):
                self._end(sub, me, dropped=True)
                return
        if sub.queue:
            wake(sub, me)

    def _fill(self, gap: Gap) -> None:
        """Give every subscriber what it missed while the link was down, or the reset event."""
        me = self._home.thread
        generation = gap.generation
        with self._lock:
            skip: set[Subscriber] = set()
            here = Event("", event=RESET_EVENT, id=f"{gap.epoch}-{base36(gap.seq)}")
            start = Event("", event=RESET_EVENT, id=f"{gap.epoch}-0")
            for sub in self._everyone():
                assert isinstance(sub, _RedisSubscriber)
                if not gap.lost.isdisjoint(sub.channels):
                    # The history does not cover what it missed: reset, from now.
                    skip.add(sub)
                    self._give(sub, (generation, gap.seq, here, "", None), me)
                    self._resets += 1
                elif gap.epoch_changed:
                    # Redis lost its data: reset, then everything of the new epoch.
                    self._give(sub, (generation, 0, start, "", None), me)
                    self._resets += 1
            for n, name, event, key in gap.events:
                entry = (generation, n, event, name, key)
                for sub in list(self._subscribers.get(name, ())):
                    if sub not in skip:
                        self._give(sub, entry, me)  # type: ignore[arg-type]
                for pending_sub in list(self._pending.get(name, ())):
                    if pending_sub not in skip:
                        self._give(pending_sub, entry, me)

    def _give(
        self,
        sub: _RedisSubscriber,
        entry: tuple[int, int, Event, str, str | None],
        me: int,
    ) -> None:
        """Queue an event for ``sub`` if it is live, else buffer it; the lock is held."""
        if sub.ended:
            return
        if not sub.live:
            self._hold(sub, entry, me)
        elif not self._offer(sub, entry[2], entry[3], entry[4]):
            self._end(sub, me, dropped=True)
        else:
            wake(sub, me)

    def _keep_histories(self) -> None:
        """In the home hub: keep the histories of subscribed channels from expiring."""
        assert self._history_ttl is not None
        period = self._history_ttl / 4
        while not self._closed:
            gevent.sleep(period)
            with self._lock:
                channels = self._subscribers.keys() | self._pending.keys() | self._left
                self._left = set()
            try:
                self._store.keep(sorted(channels))
            except BrokerUnavailableError as exc:
                # The link logs the outage; the keys do not expire meanwhile
                # unless Redis is up, and then the next pass sets them again.
                log.debug("Could not renew the histories' expiry: %s", str(exc))

    # Ending.

    def _unregister(self, sub: Subscriber) -> None:
        super()._unregister(sub)
        if self._history_ttl is not None:
            self._left.update(sub.channels)
        if isinstance(sub, _RedisSubscriber):
            # In place: the reader may be draining this very deque.
            for entry in [entry for entry in self._finalize if entry[1] is sub]:
                self._finalize.remove(entry)
        pending, subscribers = self._pending, self._subscribers
        if any(name not in pending and name not in subscribers for name in sub.channels):
            self._link.kick()

    def close(self) -> None:
        """End every subscription, close every connection; idempotent."""
        me = get_ident()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._end_everyone(me)
            self._finalize.clear()
        _brokers.discard(self)
        self._link.close()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            self._home.call(lambda: keeper.kill(block=False))
        self._home.call(self._pool.close)
        for kwargs in self._sentinel_kwargs:
            self._home.call(functools.partial(close_sentinels, kwargs))

    def _forked(self) -> None:
        """In a child process: let go of the parent's connections without touching them."""
        self._is_forked = True
        self._closed = True
        self._link.forked()
        self._pool.close()

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run raw ``commands`` on a pooled connection, in one round trip; their replies.

        For the library's own parts beside the channels (presence, the
        operator page). An error reply comes back in its place.

        :raises BrokerUnavailableError: if Redis cannot be reached in time.
        :raises BrokerClosedError: after :meth:`close`.
        """
        self._check_usable("execute")
        return self._home.run(self._pool.execute, commands)

    def stats(self) -> BrokerStats:
        """This process's counters; see :class:`BrokerStats` (``history`` is 0)."""
        with self._lock:
            return BrokerStats(**self._local_stats())


class RedisSubscription(LocalSubscription):
    """A subscription to a :class:`RedisBroker`; see :class:`Subscription`.

    Built by :meth:`RedisBroker.subscribe`; iterated by one greenlet of any
    thread; :meth:`close` may be called from anywhere.
    """

    __slots__ = ()


if TYPE_CHECKING:
    # mypy checks that the classes follow the contract.
    _broker: Broker = RedisBroker("redis://")
    _subscription: Subscription = _broker.subscribe(["c"])
