"""S3 (one stream, events as fast as possible) at two commits, interleaved: quick A/Bs.

Run from the repository root, after ``core.py --setup``::

    .venv/bin/python benchmarks/s3_ab.py e5f99f9 work ours --reps 3
    .venv/bin/python benchmarks/s3_ab.py e5f99f9:ours-gunicorn work:ours-worker ours

Each repetition starts a fresh server of each side in turn (``work`` is the
working tree; ``ref:server`` names the server of that side), reads one
stream for ``--window`` seconds after a warm-up and prints the events per
second and the server's CPU per event. On a busy machine the throughput
moves with the load; the CPU per event, and the ratio of the two sides
within a repetition, much less. ``core.py`` remains the reference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

import core
import servers
from servers import ROOT, SERVERS, Server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="a git commit, or 'work' for the working tree; ':server'")
    parser.add_argument("b", help="the other side, likewise")
    parser.add_argument("server", choices=sorted(SERVERS), help="where a side names none")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0)
    args = parser.parse_args()
    with ExitStack() as stack:
        sources: dict[str, Path] = {}
        for side in (args.a, args.b):
            ref = side.partition(":")[0]
            if ref == "work":
                sources[side] = ROOT
            else:
                snapshot = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-"))
                core.export(ref, Path(snapshot))
                sources[side] = Path(snapshot)
        figures: dict[str, list[tuple[float, float]]] = {side: [] for side in sources}
        for rep in range(args.reps):
            for ref, source in sources.items():
                servers.use_source(source)
                name = ref.partition(":")[2] or args.server
                with Server(SERVERS[name]) as server:
                    job = {
                        "scenario": "single",
                        "host": "127.0.0.1",
                        "port": server.port,
                        "pid": server.pid,
                        "warmup": 1.0,
                        "window": args.window,
                    }
                    result = core.run_client(job, timeout=60)
                rate = result["events_per_s"]
                cpu_us = result["server_cpu_pct"] / 100 / rate * 1e6
                figures[ref].append((rate, cpu_us))
                print(f"rep {rep + 1} {ref}: {rate:,.0f} events/s, {cpu_us:.3f} us CPU per event")
    for ref, runs in figures.items():
        rate = statistics.median(run[0] for run in runs)
        cpu_us = statistics.median(run[1] for run in runs)
        print(f"{ref}: median {rate:,.0f} events/s, {cpu_us:.3f} us CPU per event")


if __name__ == "__main__":
    main()
