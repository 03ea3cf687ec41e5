"""RSS per idle stream of one server, at a commit or in the working tree: quick A/Bs.

Run from the repository root, after ``core.py --setup``::

    .venv/bin/python benchmarks/rss_ab.py HEAD~1 ours --streams 3000 --reps 2
    .venv/bin/python benchmarks/rss_ab.py work ours --streams 3000 --reps 2

Each repetition starts a fresh server, opens ``--streams`` idle streams as
S1 does (every one proven live) and prints the RSS it grew by, per stream.
Memory, unlike CPU, is little moved by a busy machine, so two refs measured
one after the other compare well; ``core.py`` remains the reference.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import core
import servers
from client import raise_fd_limit
from servers import SERVERS, Server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="a git commit, or 'work' for the working tree")
    parser.add_argument("server", choices=sorted(SERVERS))
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    raise_fd_limit()
    snapshot = None
    if args.ref != "work":
        snapshot = tempfile.TemporaryDirectory(prefix="bench-")
        core.export(args.ref, Path(snapshot.name))
        servers.use_source(Path(snapshot.name))
    figures = []
    for _ in range(args.reps):
        with Server(SERVERS[args.server]) as server:
            job = {
                "scenario": "idle",
                "host": "127.0.0.1",
                "port": server.port,
                "pid": server.pid,
                "streams": args.streams,
                "warmup": 5,
                "settle": 0.5,
                "window": 0.1,
                "path": server.spec.idle_path,
            }
            figures.append(core.run_client(job, timeout=300)["kib_per_stream"])
    if snapshot is not None:
        snapshot.cleanup()
    shown = ", ".join(f"{kib:.2f}" for kib in figures)
    print(f"{args.ref} {args.server} {args.streams} streams: {shown} KiB per stream")


if __name__ == "__main__":
    main()
