"""The Redis broker's pub/sub link: one connection that brings a process every event.

One pub/sub connection per broker subscribes, for all channels and all
local subscriptions, to the channels the broker asks for: a channel is
subscribed in Redis when its first local subscription arrives and released
when its last one leaves. Two greenlets of the broker's home hub run it:

* the *reader* connects, reads every reply and hands each event, decoded
  once, to the broker; when the connection breaks it reconnects with
  jittered exponential backoff (at most ``max_backoff`` seconds apart),
  subscribes again, and fills each channel's gap from its stream, so a
  subscriber misses nothing. When the history no longer covers the gap,
  or Redis lost its data (a new epoch), the broker hands out the reset
  event instead (:class:`Gap`).
* the *writer* brings Redis's subscriptions in line with the broker's
  channels when kicked, and ends every round with a ``PING`` numbered by a
  *generation*: its answer confirms everything sent before it. The broker
  asks for a generation (:meth:`Link.request`) and waits for it
  (:meth:`Link.wait_confirmed`) to know that Redis has subscribed a
  channel, or that the reader has passed a position. The writer also
  pings every ``health_check_interval`` when idle; silence for three
  intervals means the connection is dead, and the reader replaces it.

The link tracks where the process is: the epoch it has seen, how many
epochs it has seen (its *generation of epochs*, to order what was buffered
across a change), and the newest ``n`` it has delivered, so an event that a
gap fill already delivered is not delivered again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event
from redis.exceptions import RedisError

from .._errors import InvalidEventError
from .._event import Event
from ._local import base36
from ._redis_home import Home
from ._redis_wire import Snapshot, Store, decode_keyed
from .base import BrokerClosedError, BrokerUnavailableError

__all__ = ["Gap", "Link"]

# The name users know the Redis broker's messages by, wherever the code is.
# Log calls pass str(exc), not exc: a handler that keeps its records (pytest's
# does) would keep the exception's traceback and, through its frames, the
# link, its broker and a socket a kill left half made.
log = logging.getLogger("flask_sse_stream._broker.redis")


@dataclass(frozen=True, slots=True)
class Gap:
    """What the process missed while the link was down, for the broker to hand out."""

    epoch: str
    """The epoch Redis is in now."""
    seq: int
    """Redis's position now: a reset event names it."""
    generation: int
    """The link's generation of epochs for what follows."""
    lost: set[str]
    """Channels whose history no longer covers the gap: their subscribers get a reset."""
    events: list[tuple[int, str, Event, str | None]]
    """``(n, channel, event, key)`` of every missed event, in publish order."""
    epoch_changed: bool
    """Redis lost its data: every subscriber gets a reset, then all of the new epoch."""


class Link:
    """The pub/sub connection of one broker, its reader and its writer; see the module docstring.

    :param connect: makes a new (unconnected) pub/sub connection.
    :param store: reads the history for the gap fill.
    :param channels: the channels the broker wants subscribed now.
    :param on_event: called in the home hub with ``(channel, generation, n,
        event, key)`` for each event as it arrives (``key``: its conflation key).
    :param on_confirmed: called in the home hub with each newly confirmed
        ``PING`` generation.
    :param on_gap: called in the home hub with what a gap fill found.
    """

    def __init__(
        self,
        *,
        connect: Callable[[], Any],
        store: Store,
        home: Home,
        where: str,
        max_backoff: float,
        health_interval: float,
        channels: Callable[[], set[str]],
        on_event: Callable[[str, int, int, Event, str | None], None],
        on_confirmed: Callable[[int], None],
        on_gap: Callable[[Gap], None],
    ) -> None:
        self._connect = connect
        self._store = store
        self._home = home
        self._where = where
        self._max_backoff = max_backoff
        self._health_interval = health_interval
        self._channels = channels
        self._on_event = on_event
        self._on_confirmed = on_confirmed
        self._on_gap = on_gap
        self._prefix_length = len(store.keys.prefix.encode())
        self._reader: gevent.Greenlet[[], None] | None = None
        self._writer: gevent.Greenlet[[], None] | None = None
        self._kick = gevent.event.Event()
        self._progress = gevent.event.Event()
        self._server_channels: set[str] = set()
        self._requested = 0
        self._confirmed = 0
        self._recover_requested = False
        self._epoch_bytes = b""
        self.closed = False
        """True once the link has stopped for good."""
        self.up = False
        """True while the connection is subscribed and read."""
        self.conn: Any = None
        """The connection while it is up."""
        self.reconnects = 0
        """Connections that came back after a failure."""
        self.epoch: str | None = None
        """The epoch Redis is in, as far as the reader has seen."""
        self.generation = 0
        """How many epochs the reader has seen change, to order buffered events."""
        self.position = 0
        """The newest ``n`` delivered."""

    # What the broker asks of the link.

    def start(self) -> None:
        """Start the reader and the writer, if they do not run yet (home hub)."""
        if self._reader is None or self._reader.dead:
            self._reader = gevent.spawn(self._read_loop)
        if self._writer is None or self._writer.dead:
            self._writer = gevent.spawn(self._write_loop)

    def kick(self) -> None:
        """Have the writer bring Redis in line with the broker's channels; from any thread."""
        self._home.call(self._kick.set)

    def request(self) -> int:
        """A new ``PING`` generation, to pass to :meth:`wait_confirmed` after a :meth:`kick`."""
        self._requested += 1
        return self._requested

    def request_recovery(self) -> int:
        """Have the reader look for a new epoch; return the generation that confirms it."""
        self._recover_requested = True
        return self.request()

    def wait_confirmed(self, generation: int, deadline: float) -> None:
        """Wait until the pub/sub connection has answered ``PING`` ``generation``.

        :raises BrokerUnavailableError: if ``deadline`` (``time.monotonic()``) passes first.
        :raises BrokerClosedError: if the link stops meanwhile.
        """
        while self._confirmed < generation:
            if self.closed:
                raise BrokerClosedError("the broker was closed while subscribing")
            progress = self._progress
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailableError(
                    f"Redis at {self._where} did not confirm the subscription within "
                    f"{self._home.timeout} s"
                )
            progress.wait(remaining)

    def close(self) -> None:
        """Stop for good; from any thread (the greenlets stop in the home hub)."""
        self.closed = True
        self._home.call(self._stop)

    def forked(self) -> None:
        """In a child process: let go of the parent's connection without touching it."""
        self.closed = True
        if self.conn is not None:
            self.conn.disconnect()  # closes only the child's copy (redis-py checks the pid)

    def _stop(self) -> None:
        greenlets = [g for g in (self._reader, self._writer) if g is not None]
        in_hub = gevent.getcurrent() is self._home.hub
        gevent.killall(greenlets, block=not in_hub, timeout=5)
        if self.conn is not None:
            self.conn.disconnect()
        self._signal_progress()

    def _signal_progress(self) -> None:
        progress, self._progress = self._progress, gevent.event.Event()
        progress.set()

    # The reader.

    def _backoff(self, failures: int) -> float:
        ceiling = min(self._max_backoff, 0.05 * 2.0 ** min(failures, 16))
        # Half fixed, half random: workers that lost Redis together come
        # back spread out.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _read_loop(self) -> None:
        failures = 0
        while not self.closed:
            conn = self._connect()
            try:
                conn.connect()
                self._recover(conn, resubscribe=True)
                if failures:
                    self.reconnects += 1
                    log.warning("Reconnected to Redis at %s", self._where)
                failures = 0
                self.up = True
                self.conn = conn
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
                if self.closed:
                    return
                failures += 1
                delay = self._backoff(failures)
                expected = RedisError | OSError | BrokerUnavailableError
                if closed_under_us or isinstance(exc, expected):
                    log.warning(
                        "Lost the pub/sub connection to Redis at %s (%s); reconnecting in %.2f s",
                        self._where,
                        str(exc),
                        delay,
                    )
                else:
                    log.exception("The Redis pub/sub reader failed; reconnecting in %.2f s", delay)
                gevent.sleep(delay)
            except BaseException:
                self._link_down(conn)
                raise

    def _link_down(self, conn: Any) -> None:
        if self.conn is conn or self.conn is None:
            self.up = False
            self.conn = None
        conn.disconnect()
        self._signal_progress()

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
        self._on_confirmed(generation)
        self._signal_progress()

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
        if n <= self.position:
            return  # the last gap filling delivered it
        self.position = n
        channel = pubsub_channel[self._prefix_length :].decode()
        try:
            event, key = decode_keyed(blob, f"{self.epoch}-{base36(n)}")
        except (ValueError, InvalidEventError) as exc:
            log.warning(
                "Ignored a pub/sub message on %r that did not decode: %s", channel, str(exc)
            )
            return
        self._on_event(channel, self.generation, n, event, key)

    # Recovering: subscribing again, filling the gap.

    def _recover(self, conn: Any, *, resubscribe: bool) -> None:
        """Subscribe again (after a reconnection) and fill every channel's gap.

        Also runs when a message or a subscription shows that Redis is in a
        new epoch (it lost its data).
        """
        early: list[Any] = []
        if resubscribe:
            desired = self._channels()
            self._server_channels = set(desired)
            if desired:
                pubsub = self._store.keys.pubsub
                conn.send_command("SUBSCRIBE", *(pubsub(name) for name in desired))
                acknowledged = 0
                while acknowledged < len(desired):
                    reply = conn.read_response()
                    if type(reply) is list and reply[0] == b"subscribe":
                        acknowledged += 1
                    elif type(reply) is list and reply[0] == b"message":
                        early.append(reply)
        snapshot_of = self._store.snapshot
        old_epoch = self.epoch
        floor = 0
        if old_epoch is None:
            # The first connection: nobody is live yet, only the position counts.
            snapshot = snapshot_of((), 0)
        else:
            channels = sorted(self._server_channels)
            after = self.position
            snapshot = snapshot_of(channels if resubscribe else (), after)
            if snapshot.epoch != old_epoch:
                snapshot = snapshot_of(channels, 0)
                self._fill(snapshot, channels, 0, epoch_changed=True)
            elif snapshot.seq < after:
                self._rewound(snapshot, channels, after)
                floor = after
            elif resubscribe:
                self._fill(snapshot, channels, after, epoch_changed=False)
            else:
                return  # asked to look at the epoch: it has not changed
        self.epoch = snapshot.epoch
        self._epoch_bytes = snapshot.epoch.encode()
        self.position = max(snapshot.seq, floor)
        for reply in early:
            self._on_message(conn, reply[1], reply[2])

    def _rewound(self, snapshot: Snapshot, channels: list[str], position: int) -> None:
        """Redis is behind what this process delivered: a failover lost writes.

        A replica promoted before the old primary's last writes reached it
        (only publishes that did not return: a replica-acknowledged publish
        survives) no longer has events that went out on pub/sub. Their ids
        would be given again to other events, so the counter is moved past
        them first, and every subscriber here gets the reset event: what it
        saw and the history no longer agree.
        """
        self._store.advance(position)
        log.warning(
            "Redis is at event %d but this process delivered up to %d: a failover lost "
            "writes; the counter moves on and every subscriber gets the reset event",
            snapshot.seq,
            position,
        )
        self._on_gap(
            Gap(snapshot.epoch, position, self.generation, set(channels), [], epoch_changed=False)
        )

    def _fill(
        self, snapshot: Snapshot, channels: list[str], after: int, *, epoch_changed: bool
    ) -> None:
        """Have the broker give every subscriber what it missed, or the reset event."""
        epoch = snapshot.epoch
        history_size = self._store.history_size
        tails: dict[str, list[tuple[int, bytes]]] = {}
        lost: set[str] = set()
        for index, name in enumerate(channels):
            tail = snapshot.tail(index, after, history_size)
            if tail is None:
                lost.add(name)
            elif tail:
                tails[name] = tail
        if epoch_changed:
            self.generation += 1
        events: list[tuple[int, str, Event, str | None]] = []
        for n, name, blob in sorted(
            (n, name, blob) for name, tail in tails.items() for n, blob in tail
        ):
            try:
                events.append((n, name, *decode_keyed(blob, f"{epoch}-{base36(n)}")))
            except (ValueError, InvalidEventError):
                continue
        self._on_gap(Gap(epoch, snapshot.seq, self.generation, lost, events, epoch_changed))
        if lost or tails or epoch_changed:
            log.warning(
                "Filled the gap after a Redis interruption: %d event(s) on %d channel(s); "
                "%d channel(s) beyond the history%s",
                sum(len(tail) for tail in tails.values()),
                len(tails),
                len(lost),
                "; Redis lost its data (new epoch)" if epoch_changed else "",
            )

    # The writer.

    def _write_loop(self) -> None:
        while not self.closed:
            self._kick.wait(self._health_interval)
            self._kick.clear()
            conn = self.conn
            if conn is None or not self.up:
                continue
            try:
                self._sync(conn)
            except (RedisError, OSError) as exc:
                log.debug("Writing to the Redis pub/sub connection failed: %s", str(exc))
                conn.disconnect()  # the reader sees it and reconnects

    def _sync(self, conn: Any) -> None:
        """Bring Redis's subscriptions in line with the broker's channels, then PING."""
        desired = self._channels()
        generation = self._requested
        recover, self._recover_requested = self._recover_requested, False
        commands: list[tuple[Any, ...]] = []
        pubsub = self._store.keys.pubsub
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
        # No greenlet switch since the check of self.up: the reader cannot
        # have replaced the connection meanwhile.
        if not conn.is_connected:
            return
        self._server_channels = set(desired)
        conn.send_packed_command(conn.pack_commands(commands), check_health=False)
