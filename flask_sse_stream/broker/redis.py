"""The Redis broker: every worker process and host shares channels through Redis.

:class:`RedisBroker` follows the contract of :mod:`flask_sse_stream.broker.base`
(and passes the same contract tests as the in-process broker). An event
published in any process, by a broker or by a :class:`~flask_sse_stream.Publisher`,
reaches the subscriptions of every process; a client that reconnects to
another process replays from the same history.

What lives in Redis, under ``key_prefix`` (``sse:`` by default):

* ``sse:state``, a hash: ``epoch``, a random token, and ``seq``, the one
  counter that numbers the events of every channel;
* ``sse:stream:<channel>``, a stream per channel: the history, one entry per
  event with the stream id ``<n>-0``, trimmed with ``MAXLEN ~ history_size``;
* ``sse:meta``, a hash: per channel, ``"<epoch> <n>"``, where everything of
  that channel up to ``n`` has been trimmed away;
* pub/sub channel ``sse:<channel>`` carries each event as it is published.

One Lua script publishes: it takes the next ``n``, adds the event to the
channel's stream and publishes it, atomically and in one round trip. Event
ids are ``<epoch>-<n>`` (``n`` in base 36), unique and increasing across
channels, so one ``Last-Event-ID`` positions a client on several channels.
If Redis loses its data (a restart without persistence, a flush), a new
epoch starts and every id of the old one is unknown: the reset event.

In each process:

* one pub/sub connection subscribes, for all channels and all local
  subscriptions: a channel is subscribed in Redis when its first local
  subscription arrives and released when its last one leaves. A reader
  greenlet hands each event to the local subscriptions through the same
  queues and wake-ups as the in-process broker
  (:mod:`flask_sse_stream.broker._local`), so an event is decoded once per
  process and every subscriber gets the same object. A small pool of
  connections (``max_connections``) runs the publishing script and the
  replays. The number of connections does not depend on the number of
  clients.
* a subscription with a last id is registered first, buffering what the
  pub/sub connection brings; once Redis has confirmed the channels (a
  ``PING`` on that connection answers after the ``SUBSCRIBE``), one
  ``MULTI`` reads the position and every requested stream after the last
  id, and the subscription goes live when the pub/sub connection has
  passed that position (a second ``PING``), keeping only the buffered
  events the replay did not hold: no gap, no duplicate.
* when the pub/sub connection breaks, the reader reconnects with jittered
  exponential backoff (at most ``max_backoff`` seconds apart), subscribes
  again, and fills each channel's gap from its stream, so a subscriber
  misses nothing; when the history no longer covers the gap, or Redis lost
  its data, the subscriber gets the reset event instead.
* every Redis command runs in the process's gevent hub (the one of the
  thread that built the broker); a call from another OS thread is handed
  to that hub and waited for. A greenlet killed in the middle of a command
  leaves no half-read connection behind: the connection is closed.

The process must be monkey-patched by gevent (redis-py uses the standard
``socket`` module); the broker refuses to start otherwise.

Redis should not evict these keys (``maxmemory-policy noeviction`` or a
``volatile-*`` policy); every process and publisher sharing a
``key_prefix`` should use the same ``history_size``.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import logging
import os
import random
import secrets
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import gevent
import gevent.event
import gevent.lock
from gevent import monkey
from redis.connection import Connection, parse_url
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ..errors import InvalidEventError
from ..event import Event, JSONDumps
from ._local import (
    LocalFanOut,
    LocalSubscription,
    _allocate_lock,
    _base36,
    _check_publish,
    _check_sizes,
    _check_subscribe,
    _get_ident,
    _parse_id,
    _seq_of,
    _Subscriber,
    _wake,
)
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

T = TypeVar("T")


# The publishing script. Keys: the state hash, the meta hash, the channel's
# stream. Arguments: an epoch to adopt if there is none yet, the history
# size, the channel name, the pub/sub channel, the encoded event.
_PUBLISH_SCRIPT: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local ns = string.format('%d', n)
local size = tonumber(ARGV[2])
local mine = epoch .. ' '
local meta = redis.call('HGET', KEYS[2], ARGV[3])
if not meta or string.sub(meta, 1, #mine) ~= mine then
  -- the channel's first event of this epoch: what its stream holds is older
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[2], ARGV[3], mine .. '0')
end
if size > 0 then
  local before = redis.call('XLEN', KEYS[3])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', size, ns .. '-0', 'e', ARGV[5])
  if redis.call('XLEN', KEYS[3]) <= before then
    -- trimmed: everything before the first entry left is gone
    local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1][1]
    local kept = tonumber(string.match(first, '^(%d+)'))
    redis.call('HSET', KEYS[2], ARGV[3], mine .. string.format('%d', kept - 1))
  end
else
  redis.call('HSET', KEYS[2], ARGV[3], mine .. ns)
end
redis.call('PUBLISH', ARGV[4], mine .. ns .. ' ' .. ARGV[5])
return {epoch, n}
"""
_PUBLISH_SHA: Final = hashlib.sha1(_PUBLISH_SCRIPT.encode()).hexdigest()

_NOT_PATCHED: Final = (
    "RedisBroker needs a process monkey-patched by gevent: redis-py talks to Redis "
    "through the standard socket module, and unpatched sockets would block every "
    "stream of the process while one waits for Redis. Serve the app with "
    "`flask-sse-stream serve MODULE:APP` or `gunicorn -k gevent` (both patch for you), "
    "or call `from gevent import monkey; monkey.patch_all()` first thing in your "
    "entry point, before anything else is imported. (To publish from a process "
    "without gevent, such as a Celery worker, use flask_sse_stream.Publisher.)"
)


# What Redis holds, and how an event is written there.


class _Keys:
    """The names of a broker's keys and pub/sub channels under ``prefix``."""

    __slots__ = ("meta", "prefix", "state", "stream_prefix")

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"key_prefix is a str, not {type(prefix).__name__}")
        self.prefix = prefix
        self.state = f"{prefix}state"
        self.meta = f"{prefix}meta"
        self.stream_prefix = f"{prefix}stream:"

    def stream(self, channel: str) -> str:
        return self.stream_prefix + channel

    def pubsub(self, channel: str) -> str:
        return self.prefix + channel


def _optional(value: str | None) -> bytes:
    return b"" if value is None else b"+" + value.encode()


def _encode(event: Event, dumps: JSONDumps) -> bytes:
    """The bytes Redis keeps and publishes for ``event`` (its id is added by the script).

    Five fields, newline-separated: the kind of data (``s`` text, ``j``
    JSON, ``n`` none), the event type, an id the publisher gave, the retry
    time, the data. ``event`` and ``id`` cannot hold a newline (the
    :class:`Event` checks), so only the data, last, may.
    """
    data = event.data
    if data is None:
        kind, body = b"n", b""
    elif isinstance(data, str):
        kind, body = b"s", data.encode()
    else:
        text = dumps(data)
        if not isinstance(text, str):
            raise InvalidEventError(f"the JSON encoder returned {type(text).__name__}, not str")
        kind, body = b"j", text.encode()
    retry = b"" if event.retry is None else b"%d" % event.retry
    return b"\n".join((kind, _optional(event.event), _optional(event.id), retry, body))


def _decode(blob: bytes, event_id: str) -> Event:
    """The :class:`Event` that :func:`_encode` wrote; ``event_id`` unless it had its own.

    :raises ValueError: if ``blob`` was not written by :func:`_encode`.
    """
    kind, event_type, own_id, retry, body = blob.split(b"\n", 4)
    data: Any
    if kind == b"s":
        data = body.decode()
    elif kind == b"j":
        data = json.loads(body)
    elif kind == b"n":
        data = None
    else:
        raise ValueError(f"unknown kind of data {kind[:8]!r}")
    return Event(
        data,
        event_type[1:].decode() if event_type else None,
        own_id[1:].decode() if own_id else event_id,
        int(retry) if retry else None,
    )


def _new_epoch() -> str:
    return _base36(secrets.randbits(40))


def _connection_factory(
    url: str, *, timeout: float, socket_timeout: float | None, name: str
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The redis-py connection class and keyword arguments for ``url``."""
    if not isinstance(url, str):
        raise TypeError(f"url is a str such as 'redis://localhost:6379/0', not {url!r:.80}")
    try:
        kwargs = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ValueError(f"not a Redis URL: {exc}") from None
    connection_class = kwargs.pop("connection_class", Connection)
    kwargs.update(
        # RESP2 keeps pub/sub messages plain replies, read by the reader in order.
        protocol=2,
        socket_timeout=socket_timeout,
        socket_connect_timeout=timeout,
        client_name=name,
        decode_responses=False,
    )
    return connection_class, kwargs


def _pipeline(conn: Any, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` on ``conn`` at once and read every reply.

    An error reply is returned in its place, as a ``ResponseError`` (the
    connection stays in step). Anything else that interrupts us, a network
    error or a ``GreenletExit``/``Timeout`` thrown into this greenlet,
    leaves replies unread, so the connection is closed before it goes back
    to a pool: it is never reused half-read.
    """
    try:
        conn.send_packed_command(conn.pack_commands(commands), check_health=False)
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(conn.read_response())
            except ResponseError as error:
                replies.append(error)
    except BaseException:
        conn.disconnect()
        raise
    return replies


def _where(kwargs: dict[str, Any]) -> str:
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def _run_publish(
    execute: Callable[[Sequence[tuple[Any, ...]]], list[Any]],
    *,
    keys: _Keys,
    channel: str,
    blob: bytes,
    candidate: str,
    history_size: int,
) -> tuple[str, int]:
    """Run the publishing script; return ``(epoch, n)``."""
    args = (
        3,
        keys.state,
        keys.meta,
        keys.stream(channel),
        candidate,
        history_size,
        channel,
        keys.pubsub(channel),
        blob,
    )
    (reply,) = execute([("EVALSHA", _PUBLISH_SHA, *args)])
    if isinstance(reply, NoScriptError):
        # A restarted or flushed Redis: EVAL also caches it again.
        (reply,) = execute([("EVAL", _PUBLISH_SCRIPT, *args)])
    if isinstance(reply, ResponseError):
        raise BrokerUnavailableError(f"Redis refused to publish to {channel!r}: {reply}")
    epoch, n = reply
    return epoch.decode(), int(n)


# The pool.


class _Pool:
    """A few connections for commands, used by greenlets of the broker's home hub."""

    def __init__(self, make: Callable[[], Any], size: int, timeout: float, where: str) -> None:
        self._make = make
        self._idle: list[Any] = []
        self._created: list[Any] = []
        self._slots = gevent.lock.BoundedSemaphore(size)
        self._timeout = timeout
        self._where = where

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``commands`` on a pooled connection; see :func:`_pipeline`.

        :raises BrokerUnavailableError: if Redis cannot be reached in time.
        """
        if not self._slots.acquire(timeout=self._timeout):
            raise BrokerUnavailableError(
                f"no Redis connection came free within {self._timeout} s "
                f"(max_connections={len(self._created)})"
            )
        try:
            conn = self._take()
            try:
                return _pipeline(conn, commands)
            finally:
                self._idle.append(conn)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailableError(f"Redis at {self._where} is unavailable: {exc}") from exc
        finally:
            self._slots.release()

    def _take(self) -> Any:
        if not self._idle:
            conn = self._make()
            self._created.append(conn)
            return conn
        conn = self._idle.pop()
        if conn.is_connected:
            # Readable while idle: the server closed it (a restart, CLIENT
            # KILL) or sent something unasked. Either way, start afresh.
            try:
                if conn.can_read(0):
                    conn.disconnect()
            except (RedisError, OSError):
                conn.disconnect()
        return conn

    def connections(self) -> list[Any]:
        """Every connection made so far (for tests and diagnostics)."""
        return list(self._created)

    def close(self) -> None:
        for conn in self._created:
            conn.disconnect()
        self._idle.clear()
        self._created.clear()


# The broker.


class _RedisSubscriber(_Subscriber):
    """A subscriber that also buffers what arrives before it goes live."""

    __slots__ = ("buffer", "live", "snap")

    def __init__(self, channels: tuple[str, ...]) -> None:
        super().__init__(channels)
        self.live = False
        # (epoch generation, n, event) fanned out before the subscriber went
        # live; at the hand-over it keeps those after ``snap``.
        self.buffer: list[tuple[int, int, Event]] = []
        # (epoch generation, n): what its replay covered; None: no replay.
        self.snap: tuple[int, int] | None = None


@dataclass(slots=True)
class _Snapshot:
    """What one ``MULTI`` read: the position and the requested channels' streams."""

    epoch: str
    seq: int
    metas: list[bytes | None]
    entries: list[list[tuple[int, bytes]]]

    def tail(self, index: int, after: int, history_size: int) -> list[tuple[int, bytes]] | None:
        """Channel ``index``'s events after ``after``; ``None`` if the history lost some."""
        mine = self.epoch.encode() + b" "
        meta = self.metas[index]
        if meta is None or not meta.startswith(mine):
            return []  # nothing published on it in this epoch
        trimmed = int(meta[len(mine) :])
        entries = self.entries[index]
        # More than history_size after it: the oldest of them are beyond
        # the history, even if Redis has not trimmed them yet (MAXLEN ~).
        if trimmed > after or len(entries) > history_size:
            return None
        return entries


_brokers: weakref.WeakSet[RedisBroker] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for broker in list(_brokers):
        broker._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class RedisBroker(LocalFanOut):
    """A broker shared through Redis by every process and host; see the module docstring.

    :param url: ``redis://[[user]:password@]host[:port][/db]``,
        ``rediss://`` (TLS) or ``unix:///path/to/socket[?db=N]``.
    :param history_size: events kept per channel for replay (Redis stream
        ``MAXLEN``; Redis may keep a few more, never fewer).
    :param queue_size: live events a local subscription may have waiting
        before it is dropped as slow.
    :param key_prefix: prefix of every key and pub/sub channel, so that
        several apps can share one Redis.
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
        max_connections: int = 8,
        timeout: float = 5.0,
        max_backoff: float = 2.0,
        health_check_interval: float = 5.0,
        json_dumps: JSONDumps = json.dumps,
    ) -> None:
        _check_sizes(history_size, queue_size)
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
        super().__init__(queue_size)
        self._history_size = history_size
        self._keys = _Keys(key_prefix)
        self._prefix_length = len(key_prefix.encode())
        self._timeout = float(timeout)
        self._max_backoff = float(max_backoff)
        self._health_interval = float(health_check_interval)
        self._dumps = json_dumps
        cls, kwargs = _connection_factory(
            url, timeout=timeout, socket_timeout=timeout, name="flask-sse-stream:pool"
        )
        self._where = _where(kwargs)
        self._pool = _Pool(functools.partial(cls, **kwargs), max_connections, timeout, self._where)
        sub_cls, sub_kwargs = _connection_factory(
            url,
            timeout=timeout,
            # Silence for three health-check intervals means the link is dead.
            socket_timeout=3 * health_check_interval,
            name="flask-sse-stream:pubsub",
        )
        self._make_pubsub = functools.partial(sub_cls, socket_keepalive=True, **sub_kwargs)
        # Where every Redis command runs.
        self._home_thread = _get_ident()
        self._home_hub = gevent.get_hub()
        self._is_forked = False
        self._candidate = _new_epoch()
        # The pub/sub link, run by the reader (reads, reconnects) and the
        # writer (subscribes, unsubscribes, pings) greenlets.
        self._reader: gevent.Greenlet[[], None] | None = None
        self._writer: gevent.Greenlet[[], None] | None = None
        self._conn: Any = None
        self._up = False
        self._kick = gevent.event.Event()
        self._progress = gevent.event.Event()
        self._server_channels: set[str] = set()
        self._requested = 0
        self._confirmed = 0
        self._recover_requested = False
        # Subscribers not live yet, per channel; and those waiting for a
        # PING generation to go live.
        self._pending: dict[str, set[_RedisSubscriber]] = {}
        self._finalize: deque[tuple[int, _RedisSubscriber]] = deque()
        # What the reader has seen: the epoch (and how many epochs it has
        # seen, to order buffered events), the newest n.
        self._epoch: str | None = None
        self._epoch_bytes = b""
        self._epoch_generation = 0
        self._position = 0
        self._reconnects = 0
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

    # Running things in the home hub.

    def _in_home(self, function: Callable[..., T], *args: Any) -> T:
        """Call ``function(*args)`` in a greenlet of the home hub and return its result."""
        if _get_ident() == self._home_thread:
            return function(*args)
        done = _allocate_lock()
        done.acquire()
        outcome: list[tuple[bool, Any]] = []

        def run() -> None:
            try:
                outcome.append((True, function(*args)))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                done.release()

        try:
            self._home_hub.loop.run_callback_threadsafe(gevent.spawn, run)
        except Exception as exc:  # the home hub is gone
            raise BrokerUnavailableError(
                f"the thread that made the RedisBroker is gone: {exc}"
            ) from None
        if not done.acquire(timeout=3 * self._timeout):
            raise BrokerUnavailableError(
                f"the RedisBroker's thread did not answer within {3 * self._timeout} s"
            )
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _check_usable(self, what: str) -> None:
        if self._is_forked:
            raise RuntimeError(
                "this RedisBroker was made before the process forked and belongs to the "
                "parent; make the broker in each process (after the fork)"
            )
        if self._closed:
            raise BrokerClosedError(f"{what}() on a closed broker")

    def _kick_writer(self) -> None:
        if _get_ident() == self._home_thread:
            self._kick.set()
        else:
            try:
                self._home_hub.loop.run_callback_threadsafe(self._kick.set)
            except Exception:
                pass  # the home hub is gone, and the link with it

    def _signal_progress(self) -> None:
        progress, self._progress = self._progress, gevent.event.Event()
        progress.set()

    def _request(self) -> int:
        """A new PING generation; the lock is held."""
        self._requested += 1
        return self._requested

    # Publishing.

    def publish(self, channel: str, event: Event) -> Event:
        """Store ``event`` in ``channel``'s stream and publish it; see :class:`Broker`.

        Waits for Redis (one round trip).

        :raises BrokerUnavailableError: if Redis cannot be reached in time;
            the event may or may not have been published.
        :raises BrokerClosedError: after :meth:`close`.
        """
        _check_publish(channel, event)
        self._check_usable("publish")
        return self._in_home(self._publish, channel, event)

    def _publish(self, channel: str, event: Event) -> Event:
        if self._orphans:
            with self._lock:
                self._release_orphans(self._home_thread)
        blob = _encode(event, self._dumps)
        candidate = self._candidate
        epoch, n = _run_publish(
            self._pool.execute,
            keys=self._keys,
            channel=channel,
            blob=blob,
            candidate=candidate,
            history_size=self._history_size,
        )
        if epoch == candidate:
            self._candidate = _new_epoch()
        self._published += 1
        if event.id is None:
            event = Event(event.data, event.event, f"{epoch}-{_base36(n)}", event.retry)
        return event

    # Subscribing.

    def subscribe(self, channels: Sequence[str], last_id: str | None = None) -> RedisSubscription:
        """Subscribe to ``channels`` from ``last_id``; see :class:`Broker`.

        Waits for Redis: one round trip on the pub/sub connection, plus one
        to read the replay when ``last_id`` is given.

        :raises BrokerUnavailableError: if Redis cannot be reached in time.
        :raises BrokerClosedError: after :meth:`close`.
        """
        names = _check_subscribe(channels, last_id)
        self._check_usable("subscribe")
        return self._in_home(self._subscribe, names, last_id)

    def _subscribe(self, names: tuple[str, ...], last_id: str | None) -> RedisSubscription:
        self._start()
        sub = _RedisSubscriber(names)
        me = self._home_thread
        with self._lock:
            if self._closed:
                raise BrokerClosedError("subscribe() on a closed broker")
            if self._orphans:
                self._release_orphans(me)
            pending = self._pending
            for name in names:
                channel_pending = pending.get(name)
                if channel_pending is None:
                    channel_pending = pending[name] = set()
                channel_pending.add(sub)
            self._open += 1
            generation = self._request()
            if last_id is None:
                # Live from the confirmation on: what came before it was
                # published before (or while) we subscribed.
                self._finalize.append((generation, sub))
        self._kick.set()
        replay: list[Event] = []
        reset = False
        try:
            deadline = time.monotonic() + self._timeout
            self._wait_confirmed(generation, deadline)
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
        parsed = _parse_id(last_id)
        names = sub.channels
        while True:
            after = parsed[1] if parsed is not None else 0
            snapshot = self._snapshot(names if parsed is not None else (), after)
            with self._lock:
                if self._closed:
                    raise BrokerClosedError("subscribe() on a closed broker")
                if snapshot.epoch == self._epoch:
                    replay, reset = self._replay(snapshot, parsed)
                    if not sub.ended:
                        sub.snap = (self._epoch_generation, snapshot.seq)
                        self._finalize.append((self._request(), sub))
                    break
                # Redis lost its data and the reader has not seen it yet:
                # have it look, then read again.
                self._recover_requested = True
                generation = self._request()
            self._kick.set()
            self._wait_confirmed(generation, deadline)
        self._kick.set()
        return replay, reset

    def _replay(
        self, snapshot: _Snapshot, parsed: tuple[str, int] | None
    ) -> tuple[list[Event], bool]:
        """The replay (or the reset event) for ``parsed``; the lock is held."""
        epoch = snapshot.epoch
        if parsed is not None and parsed[0] == epoch and parsed[1] <= snapshot.seq:
            runs: list[list[tuple[int, bytes]]] = []
            for index in range(len(snapshot.entries)):
                tail = snapshot.tail(index, parsed[1], self._history_size)
                if tail is None:
                    break
                if tail:
                    runs.append(tail)
            else:
                merged = runs[0] if len(runs) == 1 else list(heapq.merge(*runs, key=_seq_of))
                replay = self._decode_all(merged, epoch)
                self._replayed += len(replay)
                return replay, False
        self._resets += 1
        return [Event("", event=RESET_EVENT, id=f"{epoch}-{_base36(snapshot.seq)}")], True

    def _decode_all(self, entries: list[tuple[int, bytes]], epoch: str) -> list[Event]:
        events = []
        for n, blob in entries:
            try:
                events.append(_decode(blob, f"{epoch}-{_base36(n)}"))
            except (ValueError, InvalidEventError) as exc:
                log.warning("Skipped a stream entry that flask-sse-stream did not write: %s", exc)
        return events

    def _wait_confirmed(self, generation: int, deadline: float) -> None:
        """Wait until the pub/sub connection has answered PING ``generation``."""
        while self._confirmed < generation:
            if self._closed:
                raise BrokerClosedError("the broker was closed while subscribing")
            progress = self._progress
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(
                    f"Redis at {self._where} did not confirm the subscription within "
                    f"{self._timeout} s"
                )
            progress.wait(remaining)

    def _snapshot(self, channels: Sequence[str], after: int) -> _Snapshot:
        """Read the position and ``channels``' streams after ``after``, atomically."""
        keys = self._keys
        candidate = self._candidate
        commands: list[tuple[Any, ...]] = [
            ("MULTI",),
            ("HSETNX", keys.state, "epoch", candidate),
            ("HSETNX", keys.state, "seq", 0),
            ("HMGET", keys.state, "epoch", "seq"),
        ]
        if channels:
            commands.append(("HMGET", keys.meta, *channels))
            start = f"{after + 1}-0"
            count = self._history_size + 1
            commands.extend(
                ("XRANGE", keys.stream(name), start, "+", "COUNT", count) for name in channels
            )
        commands.append(("EXEC",))
        replies = self._pool.execute(commands)
        result = replies[-1]
        problems = [reply for reply in replies if isinstance(reply, ResponseError)]
        if isinstance(result, list):
            problems += [reply for reply in result if isinstance(reply, ResponseError)]
        if problems or not isinstance(result, list):
            raise BrokerUnavailableError(f"Redis refused to read the history: {problems[:1]}")
        adopted, _, (epoch, seq), *rest = result
        if adopted:
            self._candidate = _new_epoch()
        metas: list[bytes | None] = rest[0] if channels else []
        entries = [
            [(int(entry_id.split(b"-", 1)[0]), fields[1]) for entry_id, fields in stream]
            for stream in rest[1:]
        ]
        return _Snapshot(epoch.decode(), int(seq), metas, entries)

    # The pub/sub link.

    def _start(self) -> None:
        """Start the reader and the writer, if they do not run yet (home hub)."""
        if self._reader is None or self._reader.dead:
            self._reader = gevent.spawn(self._read_loop)
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write_loop)

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._max_backoff, 0.05 * 2.0 ** min(failures, 16))
        # Half fixed, half random: workers that lost Redis together come
        # back spread out.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _read_loop(self) -> None:
        failures = 0
        while not self._closed:
            conn = self._make_pubsub()
            try:
                conn.connect()
                self._recover(conn, resubscribe=True)
                if failures:
                    self._reconnects += 1
                    log.warning("Reconnected to Redis at %s", self._where)
                failures = 0
                self._up = True
                self._conn = conn
                self._kick.set()
                self._signal_progress()
                while True:
                    self._on_reply(conn, conn.read_response())
            except Exception as exc:
                # Closed under the reader (by the writer after a failed
                # write, or in a forked child): redis-py's parser may then
                # fail with anything, ValueError included.
                closed_under_us = not conn.is_connected
                self._link_down(conn)
                if self._closed:
                    return
                failures += 1
                delay = self._backoff(failures)
                expected = RedisError | OSError | BrokerUnavailableError
                if closed_under_us or isinstance(exc, expected):
                    log.warning(
                        "Lost the pub/sub connection to Redis at %s (%s); reconnecting in %.2f s",
                        self._where,
                        exc,
                        delay,
                    )
                else:
                    log.exception("The Redis pub/sub reader failed; reconnecting in %.2f s", delay)
                gevent.sleep(delay)
            except BaseException:
                self._link_down(conn)
                raise

    def _link_down(self, conn: Any) -> None:
        if self._conn is conn or self._conn is None:
            self._up = False
            self._conn = None
        conn.disconnect()
        self._signal_progress()

    def _write_loop(self) -> None:
        while not self._closed:
            self._kick.wait(self._health_interval)
            self._kick.clear()
            conn = self._conn
            if conn is None or not self._up:
                continue
            try:
                self._sync(conn)
            except (RedisError, OSError) as exc:
                log.debug("Writing to the Redis pub/sub connection failed: %s", exc)
                conn.disconnect()  # the reader sees it and reconnects

    def _sync(self, conn: Any) -> None:
        """Bring Redis's subscriptions in line with the local ones, then PING."""
        with self._lock:
            if self._orphans:
                self._release_orphans(self._home_thread)
            desired = self._subscribers.keys() | self._pending.keys()
            generation = self._requested
            recover, self._recover_requested = self._recover_requested, False
        commands: list[tuple[Any, ...]] = []
        pubsub = self._keys.pubsub
        add = desired - self._server_channels
        if add:
            commands.append(("SUBSCRIBE", *(pubsub(name) for name in add)))
        remove = self._server_channels - desired
        if remove:
            commands.append(("UNSUBSCRIBE", *(pubsub(name) for name in remove)))
        if recover:
            commands.append(("PING", "r"))
        # Every round ends with a PING: it confirms what came before it and
        # keeps the idle connection checked.
        commands.append(("PING", str(generation)))
        # No greenlet switch since the check of self._up: the reader cannot
        # have replaced the connection meanwhile.
        if not conn.is_connected:
            return
        self._server_channels = set(desired)
        conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    def _on_reply(self, conn: Any, reply: Any) -> None:
        if type(reply) is list:
            kind = reply[0]
            if kind == b"message":
                self._on_message(conn, reply[1], reply[2])
            elif kind == b"pong":
                self._on_pong(conn, reply[1])
            # (un)subscribe acknowledgements: the PING after them is what counts
        elif isinstance(reply, bytes):
            self._on_pong(conn, reply)  # a PING while subscribed to nothing

    def _on_pong(self, conn: Any, token: bytes) -> None:
        if token == b"r":
            self._recover(conn, resubscribe=False)
            return
        generation = int(token)
        if generation <= self._confirmed:
            return
        self._confirmed = generation
        me = self._home_thread
        with self._lock:
            finalize = self._finalize
            while finalize and finalize[0][0] <= generation:
                sub = finalize.popleft()[1]
                if not sub.ended:
                    self._go_live(sub, me)
        self._signal_progress()

    def _go_live(self, sub: _RedisSubscriber, me: int) -> None:
        """Move ``sub`` from pending to the fan-out sets; the lock is held."""
        buffer, sub.buffer = sub.buffer, []
        sub.live = True
        pending = self._pending
        for name in sub.channels:
            channel_pending = pending.get(name)
            if channel_pending is not None:
                channel_pending.discard(sub)
                if not channel_pending:
                    del pending[name]
        self._register(sub)
        snap = sub.snap
        if snap is None or not buffer:
            return
        generation, seq = snap
        queue = sub.queue
        for entry in buffer:
            if entry[0] > generation or (entry[0] == generation and entry[1] > seq):
                queue.append(entry[2])
        self._delivered += len(queue)
        if len(queue) > self._queue_size:
            self._end(sub, me, dropped=True)
        elif queue:
            _wake(sub, me)

    def _buffer(
        self, sub: _RedisSubscriber, generation: int, n: int, event: Event, me: int
    ) -> None:
        """Keep an event for ``sub`` until it goes live; the lock is held."""
        buffer = sub.buffer
        buffer.append((generation, n, event))
        if len(buffer) > max(2 * self._queue_size, 1000):
            self._end(sub, me, dropped=True)

    def _on_message(self, conn: Any, pubsub_channel: bytes, payload: bytes) -> None:
        try:
            epoch, number, blob = payload.split(b" ", 2)
            n = int(number)
        except ValueError:
            log.warning("Ignored a pub/sub message that flask-sse-stream did not publish")
            return
        if epoch != self._epoch_bytes:
            self._recover(conn, resubscribe=False)  # its snapshot covers this event
            return
        if n <= self._position:
            return  # the last gap filling delivered it
        self._position = n
        channel = pubsub_channel[self._prefix_length :].decode()
        try:
            event = _decode(blob, f"{self._epoch}-{_base36(n)}")
        except (ValueError, InvalidEventError) as exc:
            log.warning("Ignored a pub/sub message on %r that did not decode: %s", channel, exc)
            return
        me = self._home_thread
        generation = self._epoch_generation
        with self._lock:
            if self._orphans:
                self._release_orphans(me)
            subscribers = self._subscribers.get(channel)
            if subscribers:
                self._fan_out(subscribers, event, me)
            pending = self._pending.get(channel)
            if pending:
                for sub in list(pending):
                    self._buffer(sub, generation, n, event, me)

    def _recover(self, conn: Any, *, resubscribe: bool) -> None:
        """Subscribe again (after a reconnection) and fill every channel's gap.

        Also runs when a message or a subscription shows that Redis is in a
        new epoch (it lost its data).
        """
        early: list[Any] = []
        if resubscribe:
            with self._lock:
                desired = self._subscribers.keys() | self._pending.keys()
            self._server_channels = set(desired)
            if desired:
                pubsub = self._keys.pubsub
                conn.send_command("SUBSCRIBE", *(pubsub(name) for name in desired))
                acknowledged = 0
                while acknowledged < len(desired):
                    reply = conn.read_response()
                    if type(reply) is list and reply[0] == b"subscribe":
                        acknowledged += 1
                    elif type(reply) is list and reply[0] == b"message":
                        early.append(reply)
        old_epoch = self._epoch
        if old_epoch is None:
            # The first connection: nobody is live yet, only the position counts.
            snapshot = self._snapshot((), 0)
        else:
            channels = sorted(self._server_channels)
            after = self._position
            snapshot = self._snapshot(channels if resubscribe else (), after)
            if snapshot.epoch != old_epoch:
                snapshot = self._snapshot(channels, 0)
                self._fill(snapshot, channels, 0, epoch_changed=True)
            elif resubscribe:
                self._fill(snapshot, channels, after, epoch_changed=False)
            else:
                return  # asked to look at the epoch: it has not changed
        self._epoch = snapshot.epoch
        self._epoch_bytes = snapshot.epoch.encode()
        self._position = snapshot.seq
        for reply in early:
            self._on_message(conn, reply[1], reply[2])

    def _fill(
        self, snapshot: _Snapshot, channels: list[str], after: int, *, epoch_changed: bool
    ) -> None:
        """Give every subscriber what it missed from ``snapshot``, or the reset event."""
        epoch = snapshot.epoch
        tails: dict[str, list[tuple[int, bytes]]] = {}
        lost: set[str] = set()
        for index, name in enumerate(channels):
            tail = snapshot.tail(index, after, self._history_size)
            if tail is None:
                lost.add(name)
            elif tail:
                tails[name] = tail
        me = self._home_thread
        with self._lock:
            if epoch_changed:
                self._epoch_generation += 1
            generation = self._epoch_generation
            everyone = self._everyone()
            skip: set[_Subscriber] = set()
            here = Event("", event=RESET_EVENT, id=f"{epoch}-{_base36(snapshot.seq)}")
            start = Event("", event=RESET_EVENT, id=f"{epoch}-0")
            for sub in everyone:
                assert isinstance(sub, _RedisSubscriber)
                if not lost.isdisjoint(sub.channels):
                    # The history does not cover what it missed: reset, from now.
                    skip.add(sub)
                    self._give(sub, generation, snapshot.seq, here, me)
                    self._resets += 1
                elif epoch_changed:
                    # Redis lost its data: reset, then everything of the new epoch.
                    self._give(sub, generation, 0, start, me)
                    self._resets += 1
            merged: list[tuple[int, str, bytes]] = sorted(
                (n, name, blob) for name, tail in tails.items() for n, blob in tail
            )
            for n, name, blob in merged:
                try:
                    event = _decode(blob, f"{epoch}-{_base36(n)}")
                except (ValueError, InvalidEventError):
                    continue
                for sub in list(self._subscribers.get(name, ())):
                    if sub not in skip:
                        self._give(sub, generation, n, event, me)  # type: ignore[arg-type]
                for pending_sub in list(self._pending.get(name, ())):
                    if pending_sub not in skip:
                        self._give(pending_sub, generation, n, event, me)
        if lost or tails or epoch_changed:
            log.warning(
                "Filled the gap after a Redis interruption: %d event(s) on %d channel(s); "
                "%d channel(s) beyond the history%s",
                sum(len(tail) for tail in tails.values()),
                len(tails),
                len(lost),
                "; Redis lost its data (new epoch)" if epoch_changed else "",
            )

    def _give(self, sub: _RedisSubscriber, generation: int, n: int, event: Event, me: int) -> None:
        """Queue ``event`` for ``sub`` if it is live, else buffer it; the lock is held."""
        if sub.ended:
            return
        if not sub.live:
            self._buffer(sub, generation, n, event, me)
        elif len(sub.queue) >= self._queue_size:
            self._end(sub, me, dropped=True)
        else:
            sub.queue.append(event)
            self._delivered += 1
            _wake(sub, me)

    # Ending.

    def _unregister(self, sub: _Subscriber) -> None:
        super()._unregister(sub)
        pending = self._pending
        released = False
        for name in sub.channels:
            channel_pending = pending.get(name)
            if channel_pending is not None:
                channel_pending.discard(sub)
                if not channel_pending:
                    del pending[name]
            if name not in pending and name not in self._subscribers:
                released = True
        if isinstance(sub, _RedisSubscriber):
            sub.buffer = []
            # In place: the reader may be draining this very deque.
            for entry in [entry for entry in self._finalize if entry[1] is sub]:
                self._finalize.remove(entry)
        if released:
            self._kick_writer()

    def _everyone(self) -> set[_Subscriber]:
        everyone = super()._everyone()
        for channel_pending in self._pending.values():
            everyone |= channel_pending
        return everyone

    def close(self) -> None:
        """End every subscription, close every connection; idempotent."""
        me = _get_ident()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._end_everyone(me)
            self._finalize.clear()
        _brokers.discard(self)
        if me == self._home_thread:
            self._stop()
        else:
            try:
                self._home_hub.loop.run_callback_threadsafe(self._stop)
            except Exception:
                pass  # the home hub is gone, and the connections with it

    def _stop(self) -> None:
        greenlets = [g for g in (self._reader, self._writer) if g is not None]
        in_hub = gevent.getcurrent() is self._home_hub
        gevent.killall(greenlets, block=not in_hub, timeout=5)
        if self._conn is not None:
            self._conn.disconnect()
        self._pool.close()
        self._signal_progress()

    def _forked(self) -> None:
        """In a child process: let go of the parent's connections without touching them."""
        self._is_forked = True
        self._closed = True
        if self._conn is not None:
            self._conn.disconnect()  # closes only the child's copy (redis-py checks the pid)
        self._pool.close()

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
