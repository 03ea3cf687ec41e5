"""One scenario at two commits (or servers), interleaved: quick A/Bs without the peers' drift.

Run from the repository root, after ``core.py --setup``::

    .venv/bin/python benchmarks/ab.py s3 e5f99f9 work --reps 3
    .venv/bin/python benchmarks/ab.py s3 e5f99f9:ours-gunicorn work:ours-worker
    .venv/bin/python benchmarks/ab.py s1 HEAD~1 work --streams 3000 --reps 2
    .venv/bin/python benchmarks/ab.py s2 e5f99f9 work
    .venv/bin/python benchmarks/ab.py s4 e5f99f9 work   # servers that watch for a close
    .venv/bin/python benchmarks/ab.py s5 e5f99f9 work

A side is a git commit or ``work`` (the working tree), and ``:server`` names
its server (default ``--server``). Each repetition starts a fresh server of
each side in turn and runs the scenario's load client of ``core.py`` with
its full-run settings (S1 at ``--streams`` only); the figures are the
medians of the repetitions, and the last column is B's median over A's.
A ratio to a peer, as ``core.py`` reports it, carries the peer's own drift
between two runs (20-30 % on this shared machine); two sides measured in
turn under the same load compare directly. ``core.py`` remains the
reference.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import core
import servers
from client import raise_fd_limit
from servers import ROOT, SERVERS, Server

Figure = tuple[str, Callable[[dict[str, Any]], float]]


def _shown(value: float) -> str:
    return f"{value:,.0f}" if value >= 1e4 else f"{value:.4g}"


def _largest(stages: dict[str, Any]) -> Any:
    return stages[max(stages, key=int)]


FIGURES: dict[str, list[Figure]] = {
    "s1": [
        (
            "RSS per idle stream (KiB)",
            lambda r: r["stages"][max(r["stages"], key=int)]["kib_per_stream"],
        ),
        ("idle CPU (% of a core)", lambda r: r["cpu_pct"]),
        ("heartbeats per stream in the window", lambda r: r["heartbeats_in_window"] / r["streams"]),
        ("time to open (s)", lambda r: r["open_seconds"]),
        ("server CPU per stream opened (us)", lambda r: r["open_cpu_us_per_stream"]),
    ],
    "s2": [
        ("delivered events/s at saturation", lambda r: r["sat"][0]["delivered_per_s"]),
        ("latency p50 at 10/s (ms)", lambda r: r["lat"][0]["p50_ms"]),
        ("latency p99 at 10/s (ms)", lambda r: r["lat"][0]["p99_ms"]),
        ("server CPU at 10/s (% of a core)", lambda r: r["lat"][0]["server_cpu_pct"]),
    ],
    "s3": [
        ("events/s on one stream", lambda r: r["events_per_s"]),
        ("server CPU per event (us)", lambda r: r["server_cpu_pct"] / r["events_per_s"] * 1e4),
    ],
    "s4": [
        ("close to finally p50 (ms)", lambda r: r["p50_ms"]),
        ("close to finally p99 (ms)", lambda r: r["p99_ms"]),
    ],
    "s5": [
        ("first body byte p50 (ms)", lambda r: r["first_body"]["p50_ms"]),
        ("first body byte p99 (ms)", lambda r: r["first_body"]["p99_ms"]),
    ],
}


def job_for(scenario: str, server: Server, settings: core.Settings, flag: str) -> dict[str, Any]:
    """The load client's job of ``core.py``'s scenario, against ``server``."""
    if scenario == "s1":
        return core._idle_job(server, settings, flag)
    if scenario == "s2":
        return core._fanout_job(server, settings)
    if scenario == "s3":
        return core._single_job(server, settings)
    if scenario == "s4":
        return core._disconnect_job(server, settings, 0, flag)
    return core._ttfb_job(server, settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=sorted(FIGURES))
    parser.add_argument("a", help="a git commit, or 'work' for the working tree; ':server'")
    parser.add_argument("b", help="the other side, likewise")
    parser.add_argument("--server", choices=sorted(SERVERS), default="ours")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--streams", type=int, default=10_000, help="S1's streams")
    args = parser.parse_args()
    raise_fd_limit()
    settings = dataclasses.replace(core.FULL, s1_sizes=(args.streams,))
    figures = FIGURES[args.scenario]
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
        flag = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "opened")
        values: dict[str, list[list[float]]] = {side: [] for side in sources}
        for rep in range(args.reps):
            for side, source in sources.items():
                servers.use_source(source)
                with Server(SERVERS[side.partition(":")[2] or args.server]) as server:
                    job = job_for(args.scenario, server, settings, flag)
                    if args.scenario == "s5":
                        # A fresh server's first requests pay for first use
                        # (imports, caches), and S5's p99 is the worst of 50:
                        # warm up as S1 does, and as core.py's later repetitions are.
                        core.run_client({**job, "connections": 5, "block": 0.2}, 60)
                    result = core.run_client(job, 600)
                row = [get(result) for _, get in figures]
                values[side].append(row)
                shown = ", ".join(
                    f"{name} {_shown(value)}" for (name, _), value in zip(figures, row, strict=True)
                )
                print(f"rep {rep + 1} {side}: {shown}", flush=True)
    print(f"| {args.scenario.upper()} figure | {args.a} | {args.b} | B / A |")
    print("|---|---|---|---|")
    for index, (name, _) in enumerate(figures):
        a, b = (statistics.median(run[index] for run in values[side]) for side in sources)
        print(f"| {name} | {_shown(a)} | {_shown(b)} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
