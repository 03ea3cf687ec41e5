"""The in-process broker's fan-out, measured in one process without sockets.

One publisher, N subscriber greenlets of :class:`~flask_sse_stream.broker.MemoryBroker`
on one channel. What the server adds (writing to sockets) is left out: this
is the broker alone, the ceiling a server process works under.

Figures, each the median of ``--repeat`` runs:

* ``delivered/s``: subscribers x events / wall time from the first publish
  to the last subscriber holding the last event;
* ``publish us``: wall time of one ``publish()`` call (history append plus
  the fan-out loop over every subscriber, waking those that wait), mean;
* ``p50/p99 ms``: publish-to-receive latency, sampled on every 100th
  subscriber;
* ``cpu us``: the process's CPU time per delivered event, publisher and
  subscribers together: steadier than the wall-time figures on a shared,
  noisy machine.

Cases (``--case``, repeatable; default all):

* ``batch1``: the publisher yields after every event, so every subscriber
  is woken for every event (the worst case: one greenlet switch per event
  per subscriber);
* ``batch100``: the publisher yields after 100 events; a woken subscriber
  takes them all before it sleeps again;
* ``get_batch``: as ``batch1``, but the subscribers drain with ``wait()``
  and ``get_batch(64)``, as a stream that coalesces writes does;
* ``thread``: the publisher is an OS thread, so every wake-up crosses
  threads (the hub's async watcher); it calls ``time.sleep(0)`` after
  every 100 events, and the latency includes waiting for the GIL.

Run: ``python benchmarks/broker_fanout.py [--subscribers 1000] [--events 2000]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from typing import Any

import gevent
import gevent.event

from flask_sse_stream import Event

try:
    from flask_sse_stream._broker import MemoryBroker, MemorySubscription
except ImportError:  # a commit from before the internal modules became private
    from flask_sse_stream.broker import MemoryBroker, MemorySubscription  # type: ignore[no-redef]

CASES = ("batch1", "batch100", "get_batch", "thread")
SAMPLE_EVERY = 100
clock = time.perf_counter


class Run:
    """One measurement: a broker, its subscriber greenlets, one publisher."""

    def __init__(self, case: str, subscribers: int, events: int) -> None:
        self.case = case
        self.subscribers = subscribers
        self.events = events
        self.broker = MemoryBroker(history_size=1000, queue_size=events + 1)
        # Ids are given, so a reader in another thread never looks one up
        # before the publisher has recorded its time.
        self.payload = [Event(f"event {n}", id=f"b-{n}") for n in range(events)]
        self.sent: dict[str | None, float] = {}
        self.latencies: list[float] = []
        self.remaining = subscribers
        self.finished_at = 0.0
        self.done = gevent.event.Event()
        self.yield_every = 1 if case in ("batch1", "get_batch") else 100
        self.publish_time = 0.0

    def finish(self) -> None:
        self.remaining -= 1
        if not self.remaining:
            self.finished_at = clock()
            self.done.set()

    def read_next(self, subscription: MemorySubscription, sample: bool) -> None:
        last = self.events - 1
        for count, event in enumerate(subscription):
            if sample:
                self.latencies.append(clock() - self.sent[event.id])
            if count == last:
                break
        self.finish()

    def read_batches(self, subscription: MemorySubscription, sample: bool) -> None:
        count = 0
        while count < self.events:
            subscription.wait()
            batch = subscription.get_batch(64)
            if sample:
                now = clock()
                self.latencies.extend(now - self.sent[event.id] for event in batch)
            count += len(batch)
        self.finish()

    def publish(self) -> None:
        publish, sent, yield_every = self.broker.publish, self.sent, self.yield_every
        in_thread = self.case == "thread"
        spent = 0.0
        for number, event in enumerate(self.payload):
            before = sent[event.id] = clock()
            publish("bench", event)
            spent += clock() - before
            if number % yield_every == yield_every - 1:
                if in_thread:
                    time.sleep(0)
                else:
                    gevent.sleep(0)
        self.publish_time = spent

    def measure(self) -> dict[str, float]:
        reader = self.read_batches if self.case == "get_batch" else self.read_next
        subscriptions = [self.broker.subscribe(["bench"]) for _ in range(self.subscribers)]
        greenlets = [
            gevent.spawn(reader, s, i % SAMPLE_EVERY == 0) for i, s in enumerate(subscriptions)
        ]
        gevent.sleep(0)  # every reader waits
        cpu_start = time.process_time()
        started = clock()
        if self.case == "thread":
            thread = threading.Thread(target=self.publish)
            thread.start()
            self.done.wait(timeout=300)
            thread.join(timeout=10)
        else:
            self.publish()
            self.done.wait(timeout=300)
        cpu = time.process_time() - cpu_start
        if not self.done.is_set():
            raise RuntimeError(f"{self.case}: {self.remaining} subscribers are missing events")
        elapsed = self.finished_at - started
        for subscription in subscriptions:
            subscription.close()
        gevent.joinall(greenlets, timeout=10)
        self.broker.close()
        latencies = sorted(self.latencies)
        return {
            "delivered_per_s": self.subscribers * self.events / elapsed,
            "publish_us": self.publish_time / self.events * 1e6,
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
            "cpu_us_per_delivery": cpu / (self.subscribers * self.events) * 1e6,
            "wall_s": elapsed,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--case", choices=CASES, action="append")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for case in args.case or CASES:
        runs = [Run(case, args.subscribers, args.events).measure() for _ in range(args.repeat)]
        figures: dict[str, Any] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        rates = [r["delivered_per_s"] for r in runs]
        figures["delivered_per_s_min_max"] = [min(rates), max(rates)]
        results[case] = figures
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"MemoryBroker fan-out: {args.subscribers} subscribers x {args.events} events, "
        f"median of {args.repeat}"
    )
    print(
        f"{'case':<10} {'delivered/s':>12} {'(min-max)':>22} {'publish us':>11} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'cpu us':>7}"
    )
    for case, f in results.items():
        low, high = f["delivered_per_s_min_max"]
        print(
            f"{case:<10} {f['delivered_per_s']:>12,.0f} {f'({low:,.0f}-{high:,.0f})':>22} "
            f"{f['publish_us']:>11.1f} {f['p50_ms']:>8.2f} {f['p99_ms']:>8.2f} "
            f"{f['cpu_us_per_delivery']:>7.2f}"
        )


if __name__ == "__main__":
    main()
