"""What the cluster broker and a cluster ``Publisher`` keep in a Redis Cluster, and how.

Each channel lives in its own hash slot (the channel name is the hash tag),
under ``key_prefix`` (``sse:`` by default):

* ``sse:{<channel>}:m``, a hash: the ``epoch`` the channel's history belongs
  to, ``last``, the ``n`` of its newest event, and ``trimmed``: everything
  up to it has been trimmed away;
* ``sse:{<channel>}:s``, the history: a stream, one entry per event with the
  stream id ``<n>-0``, trimmed with ``MAXLEN ~ history_size``;
* shard channel ``sse:{<channel>}`` carries each event as it is published
  (``SPUBLISH``), as ``"<epoch> <n> <event>"``, to the subscribers
  connected to the shard that holds the slot;
* ``sse:state``, a hash: ``epoch``, a random token naming this broker's
  data; an id of another epoch is unknown here (the reset event).

There is no counter shared by every channel (it would put every publish
through one shard). A channel's ``n`` is a hybrid clock: the microseconds
since 2026 by Redis's clock, but always above the channel's last ``n`` and
above the newest ``n`` the publishing process has seen (``floor``), so the
events a process publishes one after the other are numbered in that order
whatever their shard. Ids are ``<epoch>-<n>``, ``n`` in base 36.

A stream of several channels gets ids of its own: ``<epoch>-<top>.<d1>.<d2>...``
names the position reached in each channel (sorted by name), ``top - d``,
so a ``Last-Event-ID`` resumes every channel exactly, however the events of
different shards interleaved on the way.

:class:`Topology` knows which primary serves which slot (``CLUSTER SLOTS``)
and sends commands there, following ``MOVED`` and ``ASK``; it never sends
a command twice after an error that leaves unknown whether it ran.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ._local import base36
from ._redis_wire import ReplicaWait, Then, pipeline
from .base import BrokerUnavailableError

__all__ = [
    "CLUSTER_SCHEME",
    "ChannelState",
    "ClusterKeys",
    "ClusterStore",
    "Topology",
    "cluster_settings",
    "parse_position",
    "vector_id",
]

CLUSTER_SCHEME: Final = "redis+cluster"

# Seconds since the Unix epoch of 2026-01-01: keeps the clock part of n short.
_BASE: Final = 1767225600

_PUBLISH_SCRIPT: Final = f"""
local epoch = ARGV[1]
if redis.call('HGET', KEYS[1], 'epoch') ~= epoch then
  -- the channel's first event of this epoch: what its stream holds is older
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'last', 0, 'trimmed', 0)
end
local t = redis.call('TIME')
local now = (tonumber(t[1]) - {_BASE}) * 1000000 + tonumber(t[2])
local n = math.max(tonumber(redis.call('HGET', KEYS[1], 'last')) + 1, tonumber(ARGV[2]), now)
local ns = string.format('%d', n)
redis.call('HSET', KEYS[1], 'last', ns)
local size = tonumber(ARGV[3])
if size > 0 then
  local before = redis.call('XLEN', KEYS[2])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', size, ns .. '-0', 'e', ARGV[5])
  if redis.call('XLEN', KEYS[2]) <= before then
    -- trimmed: everything before the first entry left is gone
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1][1]
    local kept = tonumber(string.match(first, '^(%d+)'))
    redis.call('HSET', KEYS[1], 'trimmed', string.format('%d', kept - 1))
  end
else
  redis.call('HSET', KEYS[1], 'trimmed', ns)
end
redis.call('SPUBLISH', ARGV[4], epoch .. ' ' .. ns .. ' ' .. ARGV[5])
return ns
"""
_PUBLISH_SHA: Final = hashlib.sha1(_PUBLISH_SCRIPT.encode()).hexdigest()

# Raises a channel's last n to ARGV[2] if it is lower (see ClusterStore.advance).
_ADVANCE_SCRIPT: Final = """
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1] then
  if tonumber(redis.call('HGET', KEYS[1], 'last')) < tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'last', ARGV[2])
  end
end
return 1
"""


class ClusterKeys:
    """The names of a cluster broker's keys and shard channels under ``prefix``."""

    __slots__ = ("prefix", "state")

    def __init__(self, prefix: str) -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"key_prefix is a str, not {type(prefix).__name__}")
        if "{" in prefix or "}" in prefix:
            raise ValueError(
                f"key_prefix {prefix!r} has a brace: in a Redis Cluster the channel name "
                "is the hash tag of its keys; choose a prefix without { and }"
            )
        self.prefix = prefix
        self.state = f"{prefix}state"

    def meta(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:m"

    def stream(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}:s"

    def shard_channel(self, channel: str) -> str:
        return f"{self.prefix}{{{channel}}}"

    def channel_of(self, shard_channel: bytes) -> str:
        """The channel name of a shard channel (``prefix{name}``)."""
        return shard_channel[len(self.prefix.encode()) + 1 : -1].decode()


# Ids.


def vector_id(epoch: str, positions: Sequence[int]) -> str:
    """The id naming ``positions``, one per channel in sorted order."""
    top = max(positions)
    return f"{epoch}-{base36(top)}" + "".join("." + base36(top - p) for p in positions)


def _number(text: str) -> int | None:
    if not text or len(text) > 16 or (len(text) > 1 and text[0] == "0"):
        return None
    if not all(c in "0123456789abcdefghijklmnopqrstuvwxyz" for c in text):
        return None
    return int(text, 36)


def parse_position(last_id: str, count: int) -> tuple[str, list[int]] | None:
    """``(epoch, positions)`` for ``count`` channels from an id of ours; ``None`` if unusable.

    A plain ``<epoch>-<n>`` names ``n`` in every channel; a vector id must
    name exactly ``count`` channels.
    """
    epoch, dash, rest = last_id.partition("-")
    parts = [_number(part) for part in rest.split(".")] if len(last_id) <= 1024 else [None]
    if not dash or _number(epoch) is None or None in parts:
        return None
    numbers: list[int] = parts  # type: ignore[assignment]
    if len(numbers) == 1:
        return epoch, numbers * count
    top = numbers[0]
    positions = [top - d for d in numbers[1:]]
    if len(positions) != count or min(positions) < 0 or max(positions) != top:
        return None
    return epoch, positions


# URLs.


@dataclass(frozen=True, slots=True)
class Settings:
    """What a ``redis+cluster://`` URL says."""

    seeds: list[tuple[str, int]]
    connection: dict[str, Any]
    replicas: int


def cluster_settings(url: str, *, timeout: float, socket_timeout: float | None) -> Settings:
    """Read ``redis+cluster://[[user]:password@]host:port,host:port[/][?wait=N]``."""
    form = (
        "a cluster URL looks like 'redis+cluster://[[user]:password@]host:7000,host:7001[?wait=1]'"
    )
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        raise ValueError(f"not a Redis URL: {form}")
    seeds: list[tuple[str, int]] = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"not a Redis URL: node {item!r} has no host:port; {form}")
        seeds.append((host.strip("[]"), int(port)))
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"not a Redis URL: a cluster has only database 0; {form}")
    query = parse_qs(parts.query)
    wait = query.get("wait", ["1"])[-1]
    if not wait.isdigit():
        raise ValueError(f"not a Redis URL: wait must be a number of replicas; {form}")
    connection: dict[str, Any] = {
        "protocol": 2,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": False,
    }
    if parts.password is not None:
        connection["password"] = unquote(parts.password)
    if parts.username:
        connection["username"] = unquote(parts.username)
    return Settings(seeds, connection, int(wait))


# Where commands go.

Address = tuple[str, int]


class NodePool(Protocol):
    """Connections to one node: runs commands as :func:`pipeline` does, and closes."""

    def execute(
        self, commands: Sequence[tuple[Any, ...]], then: Then | None = None
    ) -> list[Any]: ...

    def close(self) -> None: ...


class Topology:
    """Which primary serves which slot, and sending commands there.

    :param seeds: nodes to ask for the slot map first.
    :param executor: makes the pool of connections to one node, once per node.
    :param connect: makes an unconnected connection to a node, for asking.
    """

    def __init__(
        self,
        seeds: Sequence[Address],
        executor: Callable[[Address], NodePool],
        connect: Callable[[Address], Any],
    ) -> None:
        self._seeds = list(seeds)
        self._executor = executor
        self._connect = connect
        self._executors: dict[Address, NodePool] = {}
        self._lock = threading.Lock()
        # (first slot, last slot, primary), sorted; empty until asked.
        self._ranges: list[tuple[int, int, Address]] = []
        self.version = 0
        """How many slot maps were read: a shard link compares it to its own."""

    def refresh(self) -> None:
        """Read the slot map again from any node that answers.

        :raises BrokerUnavailableError: if none does.
        """
        known = [address for _, _, address in self._ranges]
        problems: list[str] = []
        for address in dict.fromkeys([*known, *self._seeds]):
            conn = self._connect(address)
            try:
                conn.connect()
                (reply,) = pipeline(conn, [("CLUSTER", "SLOTS")])
            except (RedisError, OSError) as exc:
                problems.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            finally:
                conn.disconnect()
            if isinstance(reply, ResponseError):
                problems.append(f"{address[0]}:{address[1]}: {reply}")
                continue
            self._ranges = sorted(
                (int(entry[0]), int(entry[1]), (entry[2][0].decode(), int(entry[2][1])))
                for entry in reply
            )

            self.version += 1
            return
        raise BrokerUnavailableError(f"no node of the Redis Cluster answered: {problems[:3]}")

    def node_of(self, key: str) -> Address:
        """The primary that serves ``key``'s slot, as far as the map knows."""
        if not self._ranges:
            self.refresh()
        slot = key_slot(key.encode())
        for low, high, address in self._ranges:
            if low <= slot <= high:
                return address
        self.refresh()
        for low, high, address in self._ranges:
            if low <= slot <= high:
                return address
        raise BrokerUnavailableError(f"no node of the Redis Cluster serves slot {slot}")

    def nodes(self) -> Iterable[Address]:
        return {address for _, _, address in self._ranges}

    def _execute_on(
        self, address: Address, commands: Sequence[tuple[Any, ...]], then: Then | None = None
    ) -> list[Any]:
        pool = self._executors.get(address)
        if pool is None:
            with self._lock:  # a Publisher's threads: one pool per node
                pool = self._executors.get(address)
                if pool is None:
                    pool = self._executors[address] = self._executor(address)
        try:
            return pool.execute(commands, then)
        except BrokerUnavailableError:
            # The node may be gone (a failover): read the map before the next command.
            self._ranges = []
            raise

    def execute(
        self, key: str, commands: Sequence[tuple[Any, ...]], then: Then | None = None
    ) -> list[Any]:
        """Run ``commands`` (about ``key``'s slot) on the primary serving it.

        A ``MOVED``, ``ASK``, ``TRYAGAIN`` or ``CLUSTERDOWN`` reply means the
        command did not run there: it is sent again where the cluster says,
        a few times. A connection that fails is not retried.

        :raises BrokerUnavailableError: if the cluster cannot be reached, or
            keeps redirecting.
        """
        for attempt in range(6):
            replies = self._execute_on(self.node_of(key), commands, then)
            # Only the first reply can say the commands went to the wrong node
            # (they are about one slot); an error after it is theirs to judge.
            problem = replies[0] if isinstance(replies[0], ResponseError) else None
            if problem is None:
                return replies
            text = str(problem)
            if text.startswith("ASK "):
                host, _, port = text.split()[2].rpartition(":")
                after_asking = None if then is None else _skip_first(then)
                target = (host, int(port))
                asked = self._execute_on(target, [("ASKING",), *commands], after_asking)
                if not _redirected(asked[1]):
                    return asked[1:]
            elif text.startswith("MOVED "):
                self.refresh()
                continue
            elif not (text.startswith("TRYAGAIN") or text.startswith("CLUSTERDOWN")):
                return replies
            time.sleep(0.05 * (attempt + 1))  # a slot in migration, or a failover under way
            self.refresh()
        raise BrokerUnavailableError(f"the Redis Cluster kept redirecting the commands on {key!r}")

    def close(self) -> None:
        """Close every connection; the pools reconnect if used again."""
        for pool in self._executors.values():
            pool.close()


def _skip_first(then: Then) -> Then:
    return lambda replies: then(replies[1:])


def _redirected(reply: Any) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith(
        ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN")
    )


# Publishing and reading the history.


@dataclass(frozen=True, slots=True)
class ChannelState:
    """What one read of a channel found."""

    last: int
    """The ``n`` of its newest event in this epoch (0: none)."""
    trimmed: int
    """Everything up to this ``n`` has been trimmed away."""
    entries: list[tuple[int, bytes]]
    """``(n, encoded event)`` after the position asked for, oldest first."""

    def tail(self, after: int, history_size: int) -> list[tuple[int, bytes]] | None:
        """The events after ``after``; ``None`` if the history lost some."""
        if self.trimmed > after or len(self.entries) > history_size:
            return None
        return self.entries


def new_epoch() -> str:
    return base36(secrets.randbits(40))


class ClusterStore:
    """Publishes to, and reads, the channels of a Redis Cluster through ``topology``."""

    def __init__(
        self,
        topology: Topology,
        keys: ClusterKeys,
        history_size: int,
        *,
        replicas: int,
        timeout: float,
    ) -> None:
        self.topology = topology
        self.keys = keys
        self.history_size = history_size
        self.timeout = timeout
        self._wait = ReplicaWait(replicas, timeout)
        self._epoch: str | None = None

    def epoch(self, *, again: bool = False) -> str:
        """This broker's epoch (made on first use; read once unless ``again``)."""
        if self._epoch is None or again:
            state = self.keys.state
            _, epoch = self.topology.execute(
                state, [("HSETNX", state, "epoch", new_epoch()), ("HGET", state, "epoch")]
            )
            self._epoch = epoch.decode()
        return self._epoch

    def _script(self, key: str, script: str, sha: str, args: tuple[Any, ...]) -> Any:
        plan = self._wait.plan(self.topology.node_of(key))
        replies = self.topology.execute(key, [("EVALSHA", sha, *args), *plan.commands], plan.then)
        if isinstance(replies[0], NoScriptError):
            # Not run: this node has not cached it yet. EVAL caches it.
            replies = self.topology.execute(
                key, [("EVAL", script, *args), *plan.commands], plan.then
            )
        if isinstance(replies[0], ResponseError):
            raise BrokerUnavailableError(f"Redis refused to publish: {replies[0]}")
        plan.check(replies, "the event")
        return replies[0]

    def publish(self, channel: str, blob: bytes, floor: int) -> tuple[str, int]:
        """Store and publish ``blob`` on ``channel`` with an ``n`` above ``floor``."""
        keys = self.keys
        epoch = self.epoch()
        args = (
            2,
            keys.meta(channel),
            keys.stream(channel),
            epoch,
            floor,
            self.history_size,
            keys.shard_channel(channel),
            blob,
        )
        reply = self._script(keys.meta(channel), _PUBLISH_SCRIPT, _PUBLISH_SHA, args)
        return epoch, int(reply)

    def read(self, channel: str, after: int | None) -> ChannelState:
        """Read ``channel``'s position and, unless ``after`` is ``None``, its events after it."""
        keys = self.keys
        epoch = self.epoch()
        meta = keys.meta(channel)
        commands: list[tuple[Any, ...]] = [("HMGET", meta, "epoch", "last", "trimmed")]
        if after is not None:
            commands.append(
                (
                    "XRANGE",
                    keys.stream(channel),
                    f"{after + 1}-0",
                    "+",
                    "COUNT",
                    self.history_size + 1,
                )
            )
        replies = self.topology.execute(meta, commands)
        problems = [reply for reply in replies if isinstance(reply, ResponseError)]
        if problems:
            raise BrokerUnavailableError(f"Redis refused to read the history: {problems[0]}")
        (its_epoch, last, trimmed), *rest = replies
        if its_epoch is None or its_epoch.decode() != epoch:
            return ChannelState(0, 0, [])  # nothing published on it in this epoch
        entries = [
            (int(entry_id.split(b"-", 1)[0]), fields[1])
            for entry_id, fields in (rest[0] if rest else [])
        ]
        return ChannelState(int(last), int(trimmed), entries)

    def advance(self, channel: str, position: int) -> None:
        """Raise ``channel``'s last ``n`` to ``position``: a failover lost what followed it."""
        meta = self.keys.meta(channel)
        (reply,) = self.topology.execute(
            meta, [("EVAL", _ADVANCE_SCRIPT, 1, meta, self.epoch(), position)]
        )
        if isinstance(reply, ResponseError):
            raise BrokerUnavailableError(f"Redis refused to move {channel!r} on: {reply}")
