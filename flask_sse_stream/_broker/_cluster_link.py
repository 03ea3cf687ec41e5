"""The cluster broker's pub/sub links: one connection per shard, not per channel or client.

A channel's events travel by sharded pub/sub (``SSUBSCRIBE``) from the
primary that holds its slot. :class:`Links` keeps one :class:`ShardLink`
per primary that serves a channel the process wants, subscribes a channel
there when its first local subscription arrives and releases it when the
last one leaves.

Per channel the links remember the newest ``n`` they delivered. When a
link breaks (its primary died, and a replica is taking over) or Redis
tells it a channel left (``sunsubscribe``: its slot moved to another
shard), every channel it served is homed again: after jittered backoff the
slot map is read again, the channel is subscribed where it lives now, and
its gap is filled from its stream, so a subscriber misses nothing and gets
nothing twice. When the history no longer covers the gap, or a failover
lost events that were delivered (the new primary is behind), the broker
hands the channel's subscribers the reset event instead.

Everything here runs in the broker's home hub.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
from redis.exceptions import RedisError, ResponseError

from ._cluster_wire import Address, ChannelState, ClusterKeys, ClusterStore, Topology
from ._redis_home import Home
from .base import BrokerClosedError, BrokerUnavailableError

__all__ = ["Links", "ShardLink"]

log = logging.getLogger("flask_sse_stream._broker.cluster")


class ShardLink:
    """One pub/sub connection to one primary, and its reader greenlet."""

    def __init__(self, address: Address, conn: Any, links: Links) -> None:
        self.address = address
        self.conn = conn
        self.channels: set[str] = set()
        # Channels we unsubscribed ourselves, until Redis confirms: that
        # confirmation is not Redis telling us the channel moved.
        self.leaving: dict[str, int] = {}
        self.dead = False
        self._links = links
        self._lock = gevent.lock.Semaphore()
        self._sent = 0
        self._confirmed = 0
        self._progress = gevent.event.Event()
        self.reader = gevent.spawn(self._read_loop)

    def __repr__(self) -> str:
        return f"<ShardLink {self.address[0]}:{self.address[1]} {len(self.channels)} channel(s)>"

    def send(self, *commands: tuple[Any, ...]) -> None:
        """Send ``commands`` on the connection; a failure kills the link."""
        if self.dead:
            return
        with self._lock:
            try:
                self.conn.send_packed_command(self.conn.pack_commands(commands), check_health=False)
            except (RedisError, OSError) as exc:
                self.kill(exc)

    def ping(self) -> int:
        """Send a numbered ``PING``; its answer confirms everything sent before it."""
        self._sent += 1
        self.send(("PING", str(self._sent)))
        return self._sent

    def wait(self, number: int, deadline: float, where: str) -> None:
        """Wait until ``PING`` ``number`` is answered.

        :raises BrokerUnavailableError: if the link dies or ``deadline`` passes first.
        """
        while self._confirmed < number:
            if self.dead:
                raise BrokerUnavailableError(f"lost the pub/sub connection to {where}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(f"{where} did not confirm the subscription in time")
            self._progress.wait(remaining)

    def _signal(self) -> None:
        progress, self._progress = self._progress, gevent.event.Event()
        progress.set()

    def kill(self, reason: BaseException | str) -> None:
        """Close the link for good; its channels are homed again."""
        if self.dead:
            return
        self.dead = True
        self.conn.disconnect()
        self._signal()
        self._links.lost(self, str(reason))

    def _read_loop(self) -> None:
        conn = self.conn
        links = self._links
        try:
            while not self.dead:
                try:
                    reply = conn.read_response()
                except ResponseError as exc:
                    # An SSUBSCRIBE the slot's owner refused (MOVED: the map was
                    # old): home that slot's channels again.
                    links.refused(self, str(exc))
                    continue
                if type(reply) is not list:
                    continue
                kind = reply[0]
                if kind == b"smessage":
                    links.message(reply[1], reply[2])
                elif kind == b"pong":
                    self._confirmed = max(self._confirmed, int(reply[1] or 0))
                    self._signal()
                elif kind == b"sunsubscribe":
                    links.left(self, reply[1])
        except Exception as exc:
            self.kill(exc)


class Links:
    """The shard links of one cluster broker; see the module docstring.

    :param connect: makes an unconnected pub/sub connection to a node.
    :param channels: the channels the broker wants now.
    :param base: where a channel's gap fill starts when no event of it came
        through a link yet (its subscribers' oldest position), or ``None``.
    :param on_event: ``(channel, n, blob)`` for each new event, in order per channel.
    :param on_lost: ``(channel, position)``: the history cannot fill the
        channel's gap; its subscribers get the reset event at ``position``.
    """

    def __init__(
        self,
        *,
        topology: Topology,
        store: ClusterStore,
        keys: ClusterKeys,
        home: Home,
        connect: Callable[[Address], Any],
        max_backoff: float,
        health_interval: float,
        channels: Callable[[], set[str]],
        base: Callable[[str], int | None],
        on_event: Callable[[str, int, bytes], None],
        on_lost: Callable[[str, int], None],
    ) -> None:
        self._topology = topology
        self._store = store
        self._keys = keys
        self._home = home
        self._connect = connect
        self._max_backoff = max_backoff
        self._health_interval = health_interval
        self._channels = channels
        self._base = base
        self._on_event = on_event
        self._on_lost = on_lost
        self._links: dict[Address, ShardLink] = {}
        self._home_of: dict[str, ShardLink] = {}
        self.position: dict[str, int] = {}
        """Per channel, the newest ``n`` delivered (or covered by a subscriber's snapshot)."""
        self.rehomed: dict[str, int] = {}
        """Per channel, how often it was homed again (a subscriber checks it did not miss one)."""
        self._homeless: set[str] = set()
        # Channels being homed again: their live events wait here until the
        # gap fill has read the stream (else a live event would move the
        # position past events the fill has not read yet).
        self._filling: dict[str, list[tuple[int, bytes]]] = {}
        self._release_requested = False
        self._wake = gevent.event.Event()
        self._keeper: gevent.Greenlet[[], None] | None = None
        self.closed = False
        self.reconnects = 0

    # The broker's side.

    def start(self) -> None:
        if self._keeper is None or self._keeper.dead:
            self._keeper = gevent.spawn(self._keep)

    def ensure(self, names: tuple[str, ...], deadline: float) -> None:
        """Subscribe ``names`` on their shards and wait until each shard confirms.

        :raises BrokerUnavailableError: if a shard cannot be reached in time.
        """
        self.start()
        involved: dict[Address, ShardLink] = {}
        for name in names:
            link = self._home_of.get(name)
            if link is None or link.dead:
                link = self._subscribe(name)
            involved[link.address] = link
        waits = [(link, link.ping()) for link in involved.values()]
        for link, number in waits:
            link.wait(number, deadline, f"Redis at {link.address[0]}:{link.address[1]}")

    def request_release(self) -> None:
        """Have the channels nobody wants any more unsubscribed soon; from any thread."""
        self._release_requested = True
        self._home.call(self._wake.set)

    def release(self) -> None:
        """Unsubscribe the channels nobody wants any more."""
        wanted = self._channels()
        for name in [name for name in self._home_of if name not in wanted]:
            link = self._home_of.pop(name)
            link.channels.discard(name)
            self.position.pop(name, None)
            self.rehomed.pop(name, None)
            link.leaving[name] = link.leaving.get(name, 0) + 1
            link.send(("SUNSUBSCRIBE", self._keys.shard_channel(name)))
        self._homeless &= wanted
        for name in [name for name in self._filling if name not in self._homeless]:
            del self._filling[name]
        for address, link in list(self._links.items()):
            if not link.channels and not link.dead:
                del self._links[address]
                link.dead = True
                link.conn.disconnect()

    def count(self) -> int:
        """Open shard links."""
        return sum(1 for link in self._links.values() if not link.dead)

    def close(self) -> None:
        self.closed = True
        for link in list(self._links.values()):
            link.dead = True
            link.conn.disconnect()
        greenlets = [link.reader for link in self._links.values()]
        if self._keeper is not None:
            greenlets.append(self._keeper)
        gevent.killall(greenlets, block=gevent.getcurrent() is not self._home.hub, timeout=5)
        self._links.clear()
        self._home_of.clear()

    # Where a channel lives.

    def _subscribe(self, name: str) -> ShardLink:
        address = self._topology.node_of(self._keys.shard_channel(name))
        link = self._links.get(address)
        if link is None or link.dead:
            conn = self._connect(address)
            try:
                conn.connect()
            except (RedisError, OSError) as exc:
                conn.disconnect()
                raise BrokerUnavailableError(
                    f"Redis at {address[0]}:{address[1]} is unavailable: {exc}"
                ) from None
            link = self._links[address] = ShardLink(address, conn, self)
        link.channels.add(name)
        self._home_of[name] = link
        link.send(("SSUBSCRIBE", self._keys.shard_channel(name)))
        return link

    # What the shard links report.

    def message(self, shard_channel: bytes, payload: bytes) -> None:
        try:
            epoch, number, blob = payload.split(b" ", 2)
            n = int(number)
        except ValueError:
            log.warning("Ignored a shard message that flask-sse-stream did not publish")
            return
        name = self._keys.channel_of(shard_channel)
        if epoch.decode() != self._store.epoch():
            log.warning("Ignored an event of another epoch on %r", name)
            return
        waiting = self._filling.get(name)
        if waiting is not None:
            waiting.append((n, blob))
            return
        if n <= self.position.get(name, 0):
            return  # the last gap fill delivered it
        self.position[name] = n
        self._on_event(name, n, blob)

    def lost(self, link: ShardLink, reason: str) -> None:
        """``link`` broke: home its channels again."""
        if self._links.get(link.address) is link:
            del self._links[link.address]
        if self.closed:
            return
        log.warning(
            "Lost the pub/sub connection to Redis at %s:%d (%s); %d channel(s) move",
            link.address[0],
            link.address[1],
            reason,
            len(link.channels),
        )
        self._unhome(link.channels)

    def left(self, link: ShardLink, shard_channel: bytes) -> None:
        """Redis unsubscribed a channel (its slot moved): home it again."""
        name = self._keys.channel_of(shard_channel)
        leaving = link.leaving.get(name, 0)
        if leaving:
            if leaving == 1:
                del link.leaving[name]
            else:
                link.leaving[name] = leaving - 1
            return  # our own SUNSUBSCRIBE
        if self._home_of.get(name) is link:
            log.warning("Channel %r moved to another shard; following it", name)
            self._unhome({name})

    def refused(self, link: ShardLink, reason: str) -> None:
        """A shard refused a subscription (``MOVED``): home its channels again."""
        log.warning("Redis at %s:%d refused: %s", link.address[0], link.address[1], reason)
        self._unhome({name for name in link.channels if self._home_of.get(name) is link})

    def _unhome(self, names: set[str]) -> None:
        names = set(names)  # it may be the link's own set, which this empties
        for name in names:
            link = self._home_of.get(name)
            if link is not None:
                link.channels.discard(name)
                del self._home_of[name]
        self._homeless |= names
        for name in names:
            self._filling.setdefault(name, [])
        self._wake.set()

    # Homing channels again, and health checks.

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._max_backoff, 0.05 * 2.0 ** min(failures, 16))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _keep(self) -> None:
        failures = 0
        while not self.closed:
            if not self._homeless and not self._release_requested:
                self._wake.clear()
                if not self._wake.wait(self._health_interval):
                    for link in list(self._links.values()):
                        link.ping()
                    continue
                failures = 0
            if self._release_requested:
                self._release_requested = False
                self.release()
            if not self._homeless:
                continue
            try:
                self._rehome()
                if failures:
                    self.reconnects += 1
                failures = 0
            except (BrokerUnavailableError, BrokerClosedError, RedisError, OSError) as exc:
                failures += 1
                delay = self._backoff(failures)
                log.warning("Homing channels again failed (%s); again in %.2f s", str(exc), delay)
                gevent.sleep(delay)

    def _rehome(self) -> None:
        """Subscribe the homeless channels where they live now and fill their gaps."""
        wanted = self._channels()
        names = sorted(self._homeless & wanted)
        self._homeless &= wanted
        for name in list(self._filling):
            if name not in wanted:
                del self._filling[name]
        if not names:
            return
        self._topology.refresh()
        deadline = time.monotonic() + self._store.timeout
        self.ensure(tuple(names), deadline)
        for name in names:
            self.rehomed[name] = self.rehomed.get(name, 0) + 1
            self._fill(name)
            self._homeless.discard(name)
            # What came live meanwhile, after what the fill read.
            for n, blob in self._filling.pop(name, []):
                if n > self.position.get(name, 0):
                    self.position[name] = n
                    self._on_event(name, n, blob)
        log.warning("Subscribed %d channel(s) again and filled their gaps", len(names))

    def _fill(self, name: str) -> None:
        """Deliver what ``name`` published while it had no link, or its reset event."""
        position = self.position.get(name)
        if position is None:
            position = self._base(name)
            if position is None:
                return  # nobody has a position on it yet: a subscriber's snapshot will
        state: ChannelState = self._store.read(name, position)
        if state.last < position:
            # The new primary is behind what was delivered: a failover lost
            # events (publishes that raised). Their numbers must not come again.
            self._store.advance(name, position)
            log.warning(
                "Redis is at %d on %r but %d was delivered: a failover lost events",
                state.last,
                name,
                position,
            )
            self._on_lost(name, position)
            return
        tail = state.tail(position, self._store.history_size)
        if tail is None:
            self.position[name] = state.last
            self._on_lost(name, state.last)
            return
        for n, blob in tail:
            if n > self.position.get(name, 0):
                self.position[name] = n
                self._on_event(name, n, blob)
