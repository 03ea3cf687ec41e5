"""A Redis primary killed under load, with browsers on two gunicorn workers.

gunicorn (our worker, ``-w 2``) serves the pub/sub test app with
``SSE_BROKER_URL`` naming a Sentinel group (a primary, two replicas, three
sentinels) or a Redis Cluster (three primaries, a replica each), all real
``redis-server`` processes on free ports. A :class:`Publisher` in this
process publishes 100 events a second; the primary that holds the channel
is killed with ``SIGKILL``. Every event whose publish returned reaches
every subscriber on both workers exactly once, in order; an event whose
publish raised reaches a subscriber at most once; nobody gets a reset.

And a browser's stream of three channels on three shards, cut again and
again, resumes from its ``Last-Event-ID`` (on whichever worker) with no gap
and no duplicate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_sse_stream._broker import BrokerUnavailableError
from flask_sse_stream._publisher import Publisher

from .helpers import Server
from .test_e2e_gunicorn import OURS, start_gunicorn
from .test_e2e_pubsub import Subscriber, read_until

pytest.importorskip("redis")
from redis.crc import key_slot
from redis_server import ClusterGroup, SentinelGroup, need_redis_7

pytestmark = [pytest.mark.e2e, pytest.mark.redis_server, pytest.mark.timeout(180)]

PREFIX = "e2e:"


def on_shard(index: int, start: str) -> str:
    """A channel name whose slot the ``index``-th of three primaries serves."""
    per = 16384 // 3
    return next(
        name
        for name in (f"{start}{n}" for n in range(100000))
        if min(key_slot(name.encode()) // per, 2) == index
    )


class Topology:
    """A Sentinel group or a cluster, and how to kill the primary of a channel."""

    def __init__(self, kind: str, binary: str) -> None:
        self.kind = kind
        self.group: Any = SentinelGroup(binary) if kind == "sentinel" else ClusterGroup(binary)

    def url(self) -> str:
        return str(self.group.url())

    def kill_primary_of(self, channel: str) -> float:
        if self.kind == "sentinel":
            return float(self.group.kill_primary())
        return float(self.group.kill(self.group.primary_for(f"{PREFIX}{{{channel}}}")))


@pytest.fixture(params=["sentinel", "cluster"])
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    made = Topology(request.param, need_redis_7())
    with made.group:
        yield made


@pytest.fixture
def workers(topology: Topology, tmp_path: Path) -> Iterator[Server]:
    server = start_gunicorn(
        OURS,
        tmp_path,
        workers=2,
        env={"SSE_TEST_BROKER_URL": topology.url(), "SSE_KEY_PREFIX": PREFIX},
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def subscribers() -> Iterator[list[Subscriber]]:
    opened: list[Subscriber] = []
    yield opened
    for sub in opened:
        sub.close()


def on_both_workers(
    server: Server, opened: list[Subscriber], target: str, count: int
) -> list[Subscriber]:
    """Open ``count`` streams or more, until both workers serve some."""
    subs: list[Subscriber] = []
    deadline = time.monotonic() + 30
    while len(subs) < count or len({s.worker for s in subs}) < 2:
        assert time.monotonic() < deadline, "gunicorn never used the second worker"
        sub = Subscriber(server.port, target)
        opened.append(sub)
        read_until([sub], lambda s: s.status is not None, 20)
        assert sub.status == 200
        subs.append(sub)
        if len(subs) >= count:
            time.sleep(0.05)  # the other worker may still be starting: poll again
    return subs


class Publishing:
    """A thread publishing ``{"c": channel, "n": number}`` 100 times a second."""

    def __init__(self, publisher: Publisher, channels: list[str]) -> None:
        self.publisher = publisher
        self.channels = channels
        self.ok: dict[str, list[int]] = {c: [] for c in channels}
        self.failed: dict[str, list[int]] = {c: [] for c in channels}
        self.failed_at: list[float] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        number = 0
        while self.running:
            for channel in self.channels:
                try:
                    self.publisher.publish({"c": channel, "n": number}, channel=channel)
                    self.ok[channel].append(number)
                except BrokerUnavailableError:
                    self.failed[channel].append(number)
                    self.failed_at.append(time.monotonic())
                time.sleep(0.01)
            number += 1

    def count(self) -> int:
        return sum(len(v) for v in self.ok.values())

    def stop(self) -> None:
        self.running = False
        self.thread.join(20)
        assert not self.thread.is_alive()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a condition with a deadline


def datas(sub: Subscriber) -> list[dict[str, Any]]:
    assert all(e.event == "message" for e in sub.events), "a reset"
    return [json.loads(e.data) for e in sub.events]


def test_a_primary_killed_under_100_events_per_second_loses_and_repeats_nothing(
    topology: Topology, workers: Server, subscribers: list[Subscriber]
) -> None:
    channel = on_shard(1, "kill")
    subs = on_both_workers(workers, subscribers, f"/events?channel={channel}", 6)
    publisher = Publisher(topology.url(), key_prefix=PREFIX, timeout=2)
    publishing = Publishing(publisher, [channel])
    try:
        read_until(subs, lambda s: len(s.events) >= 100, 30)
        took_over = topology.kill_primary_of(channel)
        mark = publishing.count()
        wait_for(lambda: publishing.count() >= mark + 200, 60, "publishing to resume")
    finally:
        publishing.stop()
        publisher.close()
    ok, failed = publishing.ok[channel], publishing.failed[channel]
    read_until(subs, lambda s: bool(s.events) and json.loads(s.events[-1].data)["n"] >= ok[-1], 30)
    for sub in subs:
        got = [d["n"] for d in datas(sub)]
        assert got == sorted(set(got)), "out of order or duplicated"
        assert set(ok) <= set(got), f"lost: {sorted(set(ok) - set(got))[:10]}"
        assert set(got) <= set(ok) | set(failed), "an event nobody published"
    assert len({s.worker for s in subs}) == 2
    print(
        f"\n{topology.kind}: promoted {took_over:.2f} s after the kill; {len(ok)} publishes "
        f"returned, {len(failed)} raised; {len(subs)} subscribers on 2 workers, 0 lost, "
        "0 duplicated"
    )


@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
def test_a_stream_of_three_shards_cut_again_and_again_resumes_exactly_once(
    topology: Topology, workers: Server, subscribers: list[Subscriber]
) -> None:
    channels = [on_shard(i, "multi") for i in range(3)]
    query = "&".join(f"channel={c}" for c in channels)
    publisher = Publisher(topology.url(), key_prefix=PREFIX)
    mark = publisher.publish("mark", channel=channels[0])
    publishing = Publishing(publisher, channels)
    received: dict[str, list[int]] = {c: [] for c in channels}
    last_id = mark
    try:
        for _ in range(8):
            sub = Subscriber(workers.port, f"/events?{query}", headers=[("Last-Event-ID", last_id)])
            subscribers.append(sub)
            read_until([sub], lambda s: len(s.events) >= 20, 30)
            sub.close()  # the connection is cut
            for event, data in zip(sub.events, datas(sub), strict=True):
                received[data["c"]].append(data["n"])
                assert event.id
                last_id = event.id
    finally:
        publishing.stop()
    sub = Subscriber(workers.port, f"/events?{query}", headers=[("Last-Event-ID", last_id)])
    subscribers.append(sub)

    def caught_up(s: Subscriber) -> bool:
        got = {c: list(received[c]) for c in channels}
        for data in datas(s):
            got[data["c"]].append(data["n"])
        return all(got[c][-1:] == publishing.ok[c][-1:] for c in channels)

    read_until([sub], caught_up, 30)
    for data in datas(sub):
        received[data["c"]].append(data["n"])
    for channel in channels:
        assert received[channel] == publishing.ok[channel], channel
    assert len(last_id) < 64
