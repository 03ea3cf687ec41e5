"""What the Redis broker and :class:`~flask_sse_stream.Publisher` keep in Redis, and how.

What lives in Redis, under ``key_prefix`` (``sse:`` by default):

* ``sse:state``, a hash: ``epoch``, a random token, and ``seq``, the one
  counter that numbers the events of every channel;
* ``sse:stream:<channel>``, a stream per channel: the history, one entry per
  event with the stream id ``<n>-0``, trimmed with ``MAXLEN ~ history_size``;
* ``sse:meta:<channel>``, a string per channel: ``"<epoch> <n>"``, where
  everything of that channel up to ``n`` has been trimmed away (or may have
  expired with an earlier history of the channel);
* ``sse:marks``, a list of ``"<ms> <n>"``: the counter as it was at a few
  moments (Redis's clock) over the last two ``history_ttl``, newest first;
* pub/sub channel ``sse:<channel>`` carries each event as it is published,
  as ``"<epoch> <n> <event>"``.

With a ``history_ttl``, a channel's two keys expire once it has had no
publish and no subscriber for that long: each publish sets their expiry
to ``history_ttl + history_ttl / 4`` from now, and each process with
subscribers of the channel (or whose last subscriber of it just left) sets
it again every ``history_ttl / 4``. A client that comes back with an id
older than the counter was ``history_ttl`` ago (the marks say) and finds
no history for a channel gets the reset event: what it missed may have
expired.

One Lua script publishes: it takes the next ``n``, adds the event to the
channel's stream and publishes it, atomically and in one round trip. Event
ids are ``<epoch>-<n>`` (``n`` in base 36), unique and increasing across
channels, so one ``Last-Event-ID`` positions a client on several channels.
If Redis loses its data (a restart without persistence, a flush), a new
epoch starts and every id of the old one is unknown: the reset event.

This module holds the script, the key names, the codec of events
(:func:`encode`, :func:`decode`), the connection settings read from a URL,
how commands are sent (:func:`pipeline`), and :class:`Store`, which
publishes and reads the history with them. It has no greenlets and no
pool: a :class:`~flask_sse_stream._broker.RedisBroker` runs it in its hub,
a ``Publisher`` from any thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from redis.connection import Connection, parse_url
from redis.exceptions import NoScriptError, ResponseError
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from .._errors import InvalidEventError
from .._event import Event, JSONDumps
from ._local import base36
from .base import BrokerUnavailableError

__all__ = [
    "Execute",
    "Keys",
    "Snapshot",
    "Store",
    "close_sentinels",
    "connection_factory",
    "decode",
    "decode_keyed",
    "decode_or_skip",
    "encode",
    "new_epoch",
    "pipeline",
    "replicas_to_wait",
    "where",
]

SENTINEL_SCHEME: Final = "redis+sentinel"

Then = Callable[[list[Any]], Sequence[tuple[Any, ...]]]
"""Given the replies so far, the commands to send next on the same connection (or none)."""

Execute = Callable[[Sequence[tuple[Any, ...]], Then | None], list[Any]]
"""Sends commands on a connection and returns their replies, as :func:`pipeline` does."""

MARKS: Final = 8
"""How many marks ``sse:marks`` keeps: one per ``history_ttl / 4``, two TTLs' worth."""

# The publishing script. Keys: the state hash, the channel's meta, the
# channel's stream, the marks. Arguments: an epoch to adopt if there is none
# yet, the history size, the history TTL in ms (0: none), the pub/sub
# channel, the encoded event.
_PUBLISH_SCRIPT: Final = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
end
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local ns = string.format('%d', n)
local size = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local mine = epoch .. ' '
local meta = redis.call('GET', KEYS[2])
if not meta or string.sub(meta, 1, #mine) ~= mine then
  -- the channel's first event of this epoch, or since its history expired:
  -- what its stream holds is older, and what it held may have expired
  local lost = 0
  if ttl > 0 then
    local now = redis.call('TIME')
    local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    lost = n - 1
    for _, mark in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
      local t, m = string.match(mark, '^(%d+) (%d+)$')
      if tonumber(t) >= ms - ttl then lost = math.min(lost, tonumber(m)) end
    end
  end
  redis.call('DEL', KEYS[3])
  redis.call('SET', KEYS[2], mine .. string.format('%d', lost))
end
if size > 0 then
  local before = redis.call('XLEN', KEYS[3])
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', size, ns .. '-0', 'e', ARGV[5])
  if redis.call('XLEN', KEYS[3]) <= before then
    -- trimmed: everything before the first entry left is gone
    local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1][1]
    local kept = tonumber(string.match(first, '^(%d+)'))
    redis.call('SET', KEYS[2], mine .. string.format('%d', kept - 1))
  end
else
  redis.call('SET', KEYS[2], mine .. ns)
end
if ttl > 0 then
  local keep = ttl + math.floor(ttl / 4)
  redis.call('PEXPIRE', KEYS[2], keep)
  redis.call('PEXPIRE', KEYS[3], keep)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  local newest = redis.call('LINDEX', KEYS[4], 0)
  local t = newest and tonumber(string.match(newest, '^(%d+)')) or 0
  if ms - t >= ttl / 4 then
    redis.call('LPUSH', KEYS[4], string.format('%d %d', ms, n - 1))
    redis.call('LTRIM', KEYS[4], 0, 7)  -- MARKS
  end
end
redis.call('PUBLISH', ARGV[4], mine .. ns .. ' ' .. ARGV[5])
return {epoch, n}
"""
_PUBLISH_SHA: Final = hashlib.sha1(_PUBLISH_SCRIPT.encode()).hexdigest()

# Raises the counter to ARGV[1] if it is lower (never lowers it).
_ADVANCE_SCRIPT: Final = """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1])
end
return seq
"""


class Keys:
    """The names of a broker's keys and pub/sub channels under ``prefix``."""

    __slots__ = ("marks", "meta_prefix", "prefix", "state", "stream_prefix")

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"key_prefix is a str, not {type(prefix).__name__}")
        self.prefix = prefix
        self.state = f"{prefix}state"
        self.marks = f"{prefix}marks"
        self.meta_prefix = f"{prefix}meta:"
        self.stream_prefix = f"{prefix}stream:"

    def stream(self, channel: str) -> str:
        return self.stream_prefix + channel

    def meta(self, channel: str) -> str:
        return self.meta_prefix + channel

    def pubsub(self, channel: str) -> str:
        return self.prefix + channel


# The codec.


def _optional(value: str | None) -> bytes:
    return b"" if value is None else b"+" + value.encode()


def encode(event: Event, dumps: JSONDumps, key: str | None = None) -> bytes:
    """The bytes Redis keeps and publishes for ``event`` (its id is added by the script).

    Five fields, newline-separated: the kind of data (``s`` text, ``j``
    JSON, ``n`` none), the event type, an id the publisher gave, the retry
    time, the data. ``event`` and ``id`` cannot hold a newline (the
    :class:`Event` checks), so only the data, last, may. An event published
    with a conflation ``key`` (one line, checked by the caller) starts with
    one more line, ``k<key>``: no kind of data starts with ``k``, so the
    bytes of an event without a key are those of earlier versions.
    """
    if key is not None:
        return b"k" + key.encode() + b"\n" + encode(event, dumps)
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


def decode(blob: bytes, event_id: str) -> Event:
    """The :class:`Event` that :func:`encode` wrote; ``event_id`` unless it had its own.

    :raises ValueError: if ``blob`` was not written by :func:`encode`.
    """
    return decode_keyed(blob, event_id)[0]


def decode_keyed(blob: bytes, event_id: str) -> tuple[Event, str | None]:
    """As :func:`decode`, with the event's conflation key (``None`` if it has none)."""
    key = None
    if blob[:1] == b"k":
        line, blob = blob.split(b"\n", 1)
        key = line[1:].decode()
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
    event = Event(
        data,
        event_type[1:].decode() if event_type else None,
        own_id[1:].decode() if own_id else event_id,
        int(retry) if retry else None,
    )
    return event, key


def decode_or_skip(
    blob: bytes, event_id: str, log: logging.Logger
) -> tuple[Event, str | None] | None:
    """As :func:`decode_keyed`, or ``None`` if :func:`encode` did not write ``blob``.

    For what a broker reads back from Redis: a stranger's entry in one of
    its streams is skipped, with a warning in ``log``, not fatal.
    """
    try:
        return decode_keyed(blob, event_id)
    except (ValueError, InvalidEventError) as exc:
        # str(exc): a kept log record must not keep the traceback (see _redis_link).
        log.warning("Skipped an event that flask-sse-stream did not write: %s", str(exc))
        return None


def new_epoch() -> str:
    """A fresh random epoch, to propose in case Redis has none."""
    return base36(secrets.randbits(40))


# Connections.


def connection_factory(
    url: str, *, timeout: float, socket_timeout: float | None, name: str
) -> tuple[Callable[..., Any], dict[str, Any]]:
    """The redis-py connection class and keyword arguments for ``url``.

    For ``redis+sentinel://`` the class connects to whichever server the
    sentinels name as the primary now, asking them again at every connection.
    """
    if not isinstance(url, str):
        raise TypeError(f"url is a str such as 'redis://localhost:6379/0', not {url!r:.80}")
    settings = {
        # RESP2 keeps pub/sub messages plain replies, read by the reader in order.
        "protocol": 2,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": timeout,
        "client_name": name,
        "decode_responses": False,
    }
    if url.startswith(SENTINEL_SCHEME + "://"):
        return SentinelManagedConnection, _sentinel_kwargs(url, timeout, settings)
    try:
        kwargs = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ValueError(f"not a Redis URL: {exc}") from None
    connection_class = kwargs.pop("connection_class", Connection)
    kwargs.update(settings)
    return connection_class, kwargs


_SENTINEL_FORM: Final = (
    "a Sentinel URL looks like 'redis+sentinel://[[user]:password@]host:26379,host2:26379"
    "/service_name[/db][?wait=1&sentinel_password=...]'"
)


def _sentinel_parts(url: str) -> tuple[list[tuple[str, int]], str, int, dict[str, list[str]]]:
    parts = urlsplit(url)
    hosts: list[tuple[str, int]] = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(
                f"not a Redis URL: sentinel {item!r} has no host:port; {_SENTINEL_FORM}"
            )
        hosts.append((host.strip("[]"), int(port)))
    path = [piece for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError(f"not a Redis URL: no service name; {_SENTINEL_FORM}")
    db = int(path[1]) if len(path) == 2 else 0
    return hosts, unquote(path[0]), db, parse_qs(parts.query)


def _sentinel_kwargs(url: str, timeout: float, settings: dict[str, Any]) -> dict[str, Any]:
    hosts, service, db, query = _sentinel_parts(url)
    parts = urlsplit(url)
    sentinel_settings: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if "sentinel_password" in query:
        sentinel_settings["password"] = query["sentinel_password"][-1]
    credentials: dict[str, Any] = {}
    if parts.password is not None:
        credentials["password"] = unquote(parts.password)
    if parts.username:
        credentials["username"] = unquote(parts.username)
    sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_settings)  # type: ignore[no-untyped-call]
    kwargs = {**settings, **credentials, "db": db}
    # The pool is only the sentinels' view of the service: our connections
    # ask it for the primary's address whenever they connect.
    kwargs["connection_pool"] = SentinelConnectionPool(  # type: ignore[no-untyped-call]
        service, sentinel, **kwargs
    )
    return kwargs


def replicas_to_wait(url: str) -> int:
    """How many replicas must acknowledge a publish before it counts as done.

    ``redis+sentinel://`` URLs wait for one by default (``?wait=N`` changes
    it, ``?wait=0`` turns it off): an event acknowledged only by a primary
    that dies next is lost at the failover. Other URLs do not wait.
    """
    if not url.startswith(SENTINEL_SCHEME + "://"):
        return 0
    values = _sentinel_parts(url)[3].get("wait", ["1"])
    if not values[-1].isdigit():
        raise ValueError(f"not a Redis URL: wait must be a number of replicas; {_SENTINEL_FORM}")
    return int(values[-1])


def close_sentinels(kwargs: dict[str, Any]) -> None:
    """Close the connections to the sentinels of ``kwargs`` (from :func:`connection_factory`)."""
    pool = kwargs.get("connection_pool")
    if isinstance(pool, SentinelConnectionPool):
        for sentinel in pool.sentinel_manager.sentinels:
            sentinel.close()


def where(kwargs: dict[str, Any]) -> str:
    """Where the connections made with ``kwargs`` go, for messages."""
    pool = kwargs.get("connection_pool")
    if isinstance(pool, SentinelConnectionPool):
        return f"the primary of {pool.service_name!r} (Sentinel)"
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


def pipeline(conn: Any, commands: Sequence[tuple[Any, ...]], then: Then | None = None) -> list[Any]:
    """Send ``commands`` on ``conn`` at once and read every reply.

    ``then``, given those replies, may name more commands to send on the same
    connection (``WAIT`` counts the writes of its own connection); their
    replies follow.

    An error reply is returned in its place, as a ``ResponseError`` (the
    connection stays in step). Anything else that interrupts us, a network
    error or a ``GreenletExit``/``Timeout`` thrown into this greenlet,
    leaves replies unread, so the connection is closed before it goes back
    to a pool: it is never reused half-read.
    """
    try:
        if not conn.is_connected:
            # connect() itself: a Sentinel connection asks there where the primary is.
            conn.connect()
        replies: list[Any] = []
        while commands:
            conn.send_packed_command(conn.pack_commands(commands), check_health=False)
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except ResponseError as error:
                    replies.append(error)
            commands, then = (then(replies) if then is not None else ()), None
    except BaseException:
        conn.disconnect()
        raise
    return replies


# Publishing and reading the history.


class ReplicaWait:
    """How long a publish waits for replicas (``WAIT``), and whether it got them.

    A publish waits until ``wanted`` replicas hold the event, or as many as
    the primary has connected, if fewer: a primary whose only replica died
    (or was just promoted) has none to wait for, and nothing a failover could
    lose until one is back. ``ROLE``, sent with the script, says how many are
    connected. The ``WAIT`` goes with the script too, for as many replicas as
    the primary had the last time; if ``ROLE`` shows more now (or the primary
    is new to us), a second ``WAIT`` follows on the same connection. So a
    publish takes one round trip, and a primary without replicas does not
    wait for a ``WAIT`` to time out.
    """

    __slots__ = ("_connected", "timeout", "wanted")

    def __init__(self, wanted: int, timeout: float) -> None:
        self.wanted = wanted
        self.timeout = timeout
        self._connected: dict[Any, int] = {}

    def plan(self, node: Any) -> WaitPlan:
        """What to send for one publish on ``node``, and how to judge the replies."""
        # A primary not seen yet: ROLE first (a just promoted one may have none).
        return WaitPlan(self, node, min(self.wanted, self._connected.get(node, 0)))

    def _wait(self, count: int) -> tuple[Any, ...]:
        # Half the timeout: the reply must come before the socket's timeout.
        return ("WAIT", count, max(1, int(self.timeout * 500)))


class WaitPlan:
    """The replica wait of one publish: see :class:`ReplicaWait`."""

    __slots__ = ("_guess", "_node", "_owner", "commands")

    def __init__(self, owner: ReplicaWait, node: Any, guess: int) -> None:
        self._owner = owner
        self._node = node
        self._guess = guess
        self.commands: list[tuple[Any, ...]] = []
        """What to send after the script."""
        if owner.wanted:
            self.commands = [*([owner._wait(guess)] if guess else []), ("ROLE",)]

    def _connected(self, replies: list[Any]) -> int:
        role = replies[1 + bool(self._guess)]
        if isinstance(role, list) and role and role[0] == b"master":
            return len(role[2])
        return 0

    def then(self, replies: list[Any]) -> Sequence[tuple[Any, ...]]:
        """After the script's replies: a second ``WAIT`` if the primary has more replicas."""
        if not self.commands or isinstance(replies[0], ResponseError):
            return ()
        need = min(self._owner.wanted, self._connected(replies))
        return [self._owner._wait(need)] if need > self._guess else ()

    def check(self, replies: list[Any], what: str) -> None:
        """Raise unless the replies (the script's first) show enough acknowledgements."""
        if not self.commands:
            return
        connected = self._connected(replies)
        self._owner._connected[self._node] = connected
        need = min(self._owner.wanted, connected)
        waits = replies[1 : 1 + bool(self._guess)] + replies[2 + bool(self._guess) :]
        acks = waits[-1] if waits else 0
        if isinstance(acks, ResponseError) or int(acks) < need:
            raise BrokerUnavailableError(
                f"{what} reached the primary, but {acks} of its {connected} replica(s) "
                f"acknowledged it within {self._owner.timeout / 2} s ({self._owner.wanted} "
                "wanted): a failover now would lose it (publish again if it must get "
                "through; check the replicas)"
            )


@dataclass(slots=True)
class Snapshot:
    """What one ``MULTI`` read: the position and the requested channels' streams."""

    epoch: str
    seq: int
    metas: list[bytes | None]
    entries: list[list[tuple[int, bytes]]]
    expired: int = 0
    """Events up to this one may have expired with a history (see the marks)."""

    def tail(self, index: int, after: int, history_size: int) -> list[tuple[int, bytes]] | None:
        """Channel ``index``'s events after ``after``; ``None`` if the history lost some."""
        mine = self.epoch.encode() + b" "
        meta = self.metas[index]
        if meta is None or not meta.startswith(mine):
            # Nothing published on it in this epoch, or its history expired.
            return None if self.expired > after else []
        trimmed = int(meta[len(mine) :])
        entries = self.entries[index]
        # More than history_size after it: the oldest of them are beyond
        # the history, even if Redis has not trimmed them yet (MAXLEN ~).
        if trimmed > after or len(entries) > history_size:
            return None
        return entries


class Store:
    """Publishes to the channels under ``keys``, and reads their history, with ``execute``.

    Proposes a new random epoch whenever Redis has none (the first use, or
    after it lost its data); the first proposal Redis adopts wins. With
    ``replicas`` > 0 a publish also waits until that many replicas hold the
    event (see :class:`ReplicaWait`), and fails if they do not.
    """

    __slots__ = ("_candidate", "_execute", "_wait", "history_size", "history_ttl_ms", "keys")

    def __init__(
        self,
        execute: Execute,
        keys: Keys,
        history_size: int,
        history_ttl: float | None = None,
        *,
        replicas: int = 0,
        timeout: float = 5.0,
    ) -> None:
        self._execute = execute
        self.keys = keys
        self.history_size = history_size
        self.history_ttl_ms = 0 if history_ttl is None else max(1, round(history_ttl * 1000))
        self._wait = ReplicaWait(replicas, timeout)
        self._candidate = new_epoch()

    def publish(self, channel: str, blob: bytes) -> tuple[str, int]:
        """Store and publish ``blob`` (from :func:`encode`) on ``channel``; return ``(epoch, n)``.

        :raises BrokerUnavailableError: if Redis refuses the script.
        """
        keys = self.keys
        candidate = self._candidate
        args = (
            4,
            keys.state,
            keys.meta(channel),
            keys.stream(channel),
            keys.marks,
            candidate,
            self.history_size,
            self.history_ttl_ms,
            keys.pubsub(channel),
            blob,
        )
        plan = self._wait.plan(None)
        replies = self._execute([("EVALSHA", _PUBLISH_SHA, *args), *plan.commands], plan.then)
        reply = replies[0]
        if isinstance(reply, NoScriptError):
            # A restarted or flushed Redis: EVAL also caches it again. (The
            # script did not run: sending it again publishes once.)
            replies = self._execute([("EVAL", _PUBLISH_SCRIPT, *args), *plan.commands], plan.then)
        reply = replies[0]
        if isinstance(reply, ResponseError):
            raise BrokerUnavailableError(f"Redis refused to publish to {channel!r}: {reply}")
        plan.check(replies, f"the event on {channel!r}")
        epoch_bytes, n = reply
        epoch = epoch_bytes.decode()
        if epoch == candidate:
            self._candidate = new_epoch()
        return epoch, int(n)

    def advance(self, position: int) -> None:
        """Move the counter of ids up to ``position`` if it is behind (see ``_redis_link``).

        :raises BrokerUnavailableError: if Redis refuses to.
        """
        (reply,) = self._execute([("EVAL", _ADVANCE_SCRIPT, 1, self.keys.state, position)], None)
        if isinstance(reply, ResponseError):
            raise BrokerUnavailableError(f"Redis refused to move the counter on: {reply}")

    def snapshot(self, channels: Sequence[str], after: int, *, returning: bool = False) -> Snapshot:
        """Read the position and ``channels``' streams after ``after``, atomically.

        ``returning``: for a client that comes back with ``after``; with a
        TTL, its missing histories may have expired (:attr:`Snapshot.expired`).

        :raises BrokerUnavailableError: if Redis refuses to.
        """
        keys = self.keys
        candidate = self._candidate
        commands: list[tuple[Any, ...]] = [
            ("MULTI",),
            ("HSETNX", keys.state, "epoch", candidate),
            ("HSETNX", keys.state, "seq", 0),
            ("HMGET", keys.state, "epoch", "seq"),
        ]
        marks = bool(channels and returning and self.history_ttl_ms)
        if channels:
            commands.append(("MGET", *(keys.meta(name) for name in channels)))
            if marks:
                commands.append(("LRANGE", keys.marks, 0, -1))
                commands.append(("TIME",))
            start = f"{after + 1}-0"
            count = self.history_size + 1
            commands.extend(
                ("XRANGE", keys.stream(name), start, "+", "COUNT", count) for name in channels
            )
        commands.append(("EXEC",))
        replies = self._execute(commands, None)
        result = replies[-1]
        problems = [reply for reply in replies if isinstance(reply, ResponseError)]
        if isinstance(result, list):
            problems += [reply for reply in result if isinstance(reply, ResponseError)]
        if problems or not isinstance(result, list):
            raise BrokerUnavailableError(f"Redis refused to read the history: {problems[:1]}")
        adopted, _, (epoch, seq), *rest = result
        if adopted:
            self._candidate = new_epoch()
        metas: list[bytes | None] = rest[0] if channels else []
        expired = 0
        if marks:
            (seconds, micros) = rest[2]
            now = int(seconds) * 1000 + int(micros) // 1000
            # The counter at the oldest mark of the last TTL: anything of an
            # expired history is older. No mark that recent: the counter now.
            expired = int(seq)
            for mark in rest[1]:
                at, n = mark.split(b" ")
                if int(at) >= now - self.history_ttl_ms:
                    expired = min(expired, int(n))
        entries = [
            [(int(entry_id.split(b"-", 1)[0]), fields[1]) for entry_id, fields in stream]
            for stream in rest[(3 if marks else 1) :]
        ]
        return Snapshot(epoch.decode(), int(seq), metas, entries, expired)

    def keep(self, channels: Sequence[str]) -> None:
        """Set the expiry of ``channels``' history to ``history_ttl * 5/4`` from now.

        Called for channels that have subscribers, and for those whose last
        subscriber just left; a no-op without a TTL, and for a channel that
        has no history.
        """
        ttl = self.history_ttl_ms
        if not ttl or not channels:
            return
        keep = ttl + ttl // 4
        keys = self.keys
        commands: list[tuple[Any, ...]] = []
        for name in channels:
            commands.append(("PEXPIRE", keys.meta(name), keep))
            commands.append(("PEXPIRE", keys.stream(name), keep))
        self._execute(commands, None)
