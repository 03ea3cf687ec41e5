"""From a Redis primary's death to the first event delivered after the failover.

For each topology (``sentinel``: a primary, two replicas, three sentinels
with ``down-after-milliseconds 500``; ``cluster``: three primaries with a
replica each, ``cluster-node-timeout 1000``), all real ``redis-server``
processes (7, from ``PATH``), a gevent-patched process publishes 100 events
a second through one broker and receives them through another; the primary
of the channel is killed with ``SIGKILL``. Figures, over ``--repeat`` runs:

* ``promoted s``: from the kill until the sentinels or the cluster serve the
  channel from a replica;
* ``first event s``: from the kill until a subscriber holds the first event
  published after it whose publish returned (the first publish to a newly
  promoted primary without a replica yet waits half the timeout, 1 s here,
  for a replica: see ``ReplicaWait``);
* ``raised``: publishes that raised ``BrokerUnavailableError`` meanwhile;
  and the events lost or duplicated (0, or the run fails).

The failover itself is Redis's (detection timeouts above); what the library
adds is the reconnection backoff (at most ``max_backoff``, 0.5 s here) and
one round of subscribing again and filling the gap.

Run: ``python benchmarks/failover.py [--repeat 3] [--topology sentinel cluster]``.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # A server process: patch first, as the runner and gunicorn do.
    from gevent import monkey

    monkey.patch_all()

import argparse
import itertools
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import gevent

ROOT = Path(__file__).resolve().parents[1]
CHANNEL = "failover"


def _until(predicate: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s")
        gevent.sleep(0.01)


def _check(numbers: list[int], ok: list[int]) -> None:
    if numbers != sorted(set(numbers)) or not set(ok) <= set(numbers):
        lost = sorted(set(ok) - set(numbers))
        twice = sorted({n for n in numbers if numbers.count(n) > 1})
        disorder = [(a, b) for a, b in itertools.pairwise(numbers) if b <= a]
        raise RuntimeError(
            f"an event was lost or duplicated: lost {lost[:10]}, twice {twice[:10]}, "
            f"out of order {disorder[:5]}"
        )


def run(topology: str, binary: str) -> dict[str, float]:
    from redis_server import ClusterGroup, SentinelGroup

    from flask_sse_stream import BrokerUnavailableError, ClusterBroker, Event, RedisBroker

    group: Any = SentinelGroup(binary) if topology == "sentinel" else ClusterGroup(binary)
    with group:
        prefix = f"bench-{uuid.uuid4().hex[:8]}:"
        kind: Any = RedisBroker if topology == "sentinel" else ClusterBroker
        options = {"key_prefix": prefix, "timeout": 2, "max_backoff": 0.5}
        subscribing, publishing = kind(group.url(), **options), kind(group.url(), **options)
        subscription = subscribing.subscribe([CHANNEL])
        got: list[tuple[float, int]] = []
        ok: list[int] = []
        failed: list[int] = []
        sent_at: dict[int, float] = {}
        running = True

        def read() -> None:
            for event in subscription:
                got.append((time.monotonic(), int(event.data)))

        def publish() -> None:
            number = 0
            while running:
                sent_at[number] = time.monotonic()
                try:
                    publishing.publish(CHANNEL, Event(str(number)))
                    ok.append(number)
                except BrokerUnavailableError:
                    failed.append(number)
                number += 1
                gevent.sleep(0.01)

        reader, publisher = gevent.spawn(read), gevent.spawn(publish)
        _until(lambda: len(got) >= 100)
        if topology == "sentinel":
            promoted = group.kill_primary()
        else:
            promoted = group.kill(group.primary_for(f"{prefix}{{{CHANNEL}}}"))
        killed = group.killed_at

        # A publish that raised may still have gone out (the primary died
        # before answering): the first event that counts is one that returned.
        def after() -> list[float]:
            done = set(ok)
            return [t for t, n in got if sent_at[n] > killed and n in done]

        _until(lambda: bool(after()))
        first = min(after()) - killed
        mark = len(ok)
        _until(lambda: len(ok) >= mark + 100)
        running = False
        publisher.join(10)
        _until(lambda: bool(got) and got[-1][1] >= ok[-1])
        _check([n for _, n in got], ok)
        subscription.close()
        reader.join(5)
        subscribing.close()
        publishing.close()
    return {"promoted_s": promoted, "first_event_s": first, "raised": float(len(failed))}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--topology", nargs="+", choices=["sentinel", "cluster"], default=["sentinel", "cluster"]
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from redis_server import find_redis_7

    binary = find_redis_7()
    if binary is None:
        parser.error("no redis-server 7 on PATH (apt-get install redis-server)")
    for topology in args.topology:
        runs = [run(topology, binary) for _ in range(args.repeat)]
        figures = {key: [r[key] for r in runs] for key in runs[0]}
        print(
            f"{topology}: promoted s {statistics.median(figures['promoted_s']):.2f} "
            f"({min(figures['promoted_s']):.2f}-{max(figures['promoted_s']):.2f})  "
            f"first event s {statistics.median(figures['first_event_s']):.2f} "
            f"({min(figures['first_event_s']):.2f}-{max(figures['first_event_s']):.2f})  "
            f"raised {statistics.median(figures['raised']):.0f}  lost 0  duplicated 0  "
            f"(median of {args.repeat})",
            flush=True,
        )


if __name__ == "__main__":
    main()
