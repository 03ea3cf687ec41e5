"""Where our time and memory go: S2, S3 and S1 profiled inside the server.

Run from the repository root, after ``core.py --setup`` (py-spy lives in
the benchmark environment)::

    .venv/bin/python benchmarks/profile.py s2 --server ours --phase lat
    .venv/bin/python benchmarks/profile.py s2 --server ours --phase sat
    .venv/bin/python benchmarks/profile.py s3 --server ours
    .venv/bin/python benchmarks/profile.py s3 --server ours-worker   # or ours-gunicorn
    .venv/bin/python benchmarks/profile.py mem --server ours --streams 1000
    .venv/bin/python benchmarks/profile.py split --server ours --streams 10000
    .venv/bin/python benchmarks/profile.py idle --server ours --streams 10000
    .venv/bin/python benchmarks/profile.py levers --ref HEAD    # proposed changes, measured
    .venv/bin/python benchmarks/profile.py s2 --ref HEAD ...   # a commit's library

``s2``/``s3``/``idle`` drive the scenario's load client against one server and
sample the serving process with ``py-spy record`` (500 Hz, native frames
off) in the middle of the phase; the report lists the functions that hold
the most samples, inclusive and self, and the per-event cost (CPU samples
/ deliveries). ``mem`` starts the server under tracemalloc (25 frames),
opens the streams as S1 does, and lists what the streams allocated,
grouped by line and by traceback. ``split`` opens the streams as S1 does on a
server without tracemalloc and splits their RSS by allocator (glibc's heap,
pymalloc's arenas, the rest: other mmaps), from ``/bench/memory`` before
and after. Reports go to
``benchmarks/results/profile-*.txt`` (and stdout).
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import core
import servers
from client import get_json, raise_fd_limit
from servers import ROOT, SERVERS, Server

RESULTS = Path(__file__).resolve().parent / "results"


def py_spy(pid: int, seconds: float, out: Path) -> None:
    subprocess.run(
        [
            str(servers.PEERS_BIN / "py-spy"),
            "record",
            "-p",
            str(pid),
            "-d",
            str(int(seconds)),
            "-r",
            "500",
            "-f",
            "raw",
            "-o",
            str(out),
        ],
        check=True,
        capture_output=True,
    )


def summarize(raw: Path, top: int = 30) -> tuple[int, list[str]]:
    """The functions with the most samples in a py-spy raw (collapsed) file."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        samples = int(count)
        total += samples
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    lines = [f"{total} samples", "", "inclusive:"]
    lines += [f"{100 * n / total:5.1f} %  {f}" for f, n in inclusive.most_common(top)]
    lines += ["", "self:"]
    lines += [f"{100 * n / total:5.1f} %  {f}" for f, n in own.most_common(top)]
    return total, lines


def profile_load(args: argparse.Namespace) -> None:
    spec = SERVERS[args.server]
    with Server(spec) as server:
        if args.command == "s2":
            lat = args.phase == "lat"
            job = {
                "scenario": "fanout",
                "host": "127.0.0.1",
                "port": server.port,
                "pid": server.pid,
                "path": spec.fanout_path,
                "subscribers": args.subscribers,
                "sat_seconds": 0.5 if lat else args.seconds + 4,
                "window": 100,
                "burst": 10,
                "rate": 10.0,
                "lat_seconds": args.seconds + 4 if lat else 1.0,
                "drain_timeout": 3.0,
            }
            # The latency phase comes first in the client; saturation starts
            # after it (about 2 s with the subscribers' opening).
            delay = 3.0 if lat else 4.5
        elif args.command == "idle":
            flag = Path(tempfile.mkstemp()[1])
            flag.unlink()
            job = {
                "scenario": "idle",
                "host": "127.0.0.1",
                "port": server.port,
                "pid": server.pid,
                "sizes": [args.streams],
                "warmup": 5,
                "settle": 0.5,
                "window": args.seconds + 4,
                "opened_flag": str(flag),
                "extra_pids": {},
                "path": spec.idle_path,
            }
            delay = 0.0
        else:
            job = {
                "scenario": "single",
                "host": "127.0.0.1",
                "port": server.port,
                "pid": server.pid,
                "warmup": 0.5,
                "window": args.seconds + 2,
            }
            delay = 1.5
        process = core.start_client(job)
        time.sleep(delay)
        if args.command == "idle":
            deadline = time.monotonic() + 300
            while not flag.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2.0)
        raw = Path(tempfile.mkstemp(suffix=".txt")[1])
        py_spy(server.pid, args.seconds, raw)
        result = core.finish_client(process, timeout=120)
    _, lines = summarize(raw)
    name = (
        f"{args.command}-{args.phase}-{args.server}"
        if args.command == "s2"
        else f"{args.command}-{args.server}"
    )
    if args.command == "s2":
        phase = result["lat" if args.phase == "lat" else "sat"][0]
        figures = {k: v for k, v in phase.items() if not isinstance(v, list)}
        deliveries = (
            phase["rate"] * args.subscribers
            if args.phase == "lat"
            else phase.get("delivered_per_s", 0.0)
        )
    elif args.command == "idle":
        figures = {k: v for k, v in result.items() if k != "stages"}
        deliveries = result["heartbeats_in_window"] / result["window_s"]
    else:
        figures = result
        deliveries = result["events_per_s"]
    cpu = figures.get("server_cpu_pct") or figures.get("cpu_pct")
    header = [
        f"py-spy record, {args.seconds:g} s at 500 Hz, server {spec.name} ({spec.command()})",
        f"client figures: {json.dumps(figures)}",
        "Shares are of py-spy's samples (a gevent hub waiting in epoll counts as busy); "
        "the CPU figure is the server's CPU time (user + system) over the phase.",
    ]
    if cpu and deliveries:
        header.append(
            f"server CPU {cpu:.0f} % of a core for {deliveries:,.0f} deliveries/s: "
            f"{cpu * 1e4 / deliveries:.1f} us of CPU per delivered event"
            + (" (idle: per heartbeat received)" if args.command == "idle" else "")
        )
    header.append("")
    write(name, header + lines)
    raw.unlink()


def hold_streams(
    server: Server, streams: int, before: Callable[[], Any], after: Callable[[], Any]
) -> None:
    """Warm the server up, call ``before()``, open ``streams`` idle streams as S1 does, ``after()``.

    The warm-up (5 streams, then closed, as S1's) runs as a client of its
    own, so that ``before()`` sees none of the measured streams.
    """
    job = {
        "scenario": "idle",
        "host": "127.0.0.1",
        "port": server.port,
        "pid": server.pid,
        "sizes": [5],
        "warmup": 5,
        "settle": 0.5,
        "window": 0.1,
        "extra_pids": {},
        "path": server.spec.idle_path,
    }
    core.run_client(job, timeout=120)
    time.sleep(0.5)  # the warm-up's closes
    before()
    flag = Path(tempfile.mkstemp()[1])
    flag.unlink()
    process = core.start_client(
        dict(job, sizes=[streams], warmup=0, window=60, opened_flag=str(flag))
    )
    deadline = time.monotonic() + 300
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    after()
    process.kill()
    process.wait()


def profile_memory(args: argparse.Namespace) -> None:
    spec = SERVERS[args.server]
    # Snapshots at 10,000 streams block a worker for longer than gunicorn's 30 s timeout.
    env = {"PYTHONTRACEMALLOC": "25", "GUNICORN_CMD_ARGS": "--timeout 900", **_env(args)}
    with Server(spec, env=env) as server:
        port = server.port
        found: dict[str, Any] = {}

        def take(name: str) -> Callable[[], None]:
            return lambda: get_json(
                "127.0.0.1", port, f"/bench/tracemalloc?take={name}", timeout=300
            )

        hold_streams(server, args.streams, take("before"), take("after"))
        diff = "/bench/tracemalloc?diff=before,after"
        by_line = get_json("127.0.0.1", port, f"{diff}&top=60", 300)
        by_trace = get_json("127.0.0.1", port, f"{diff}&group=traceback&top=40", 300)
        if args.dump:
            found = get_json("127.0.0.1", port, f"{diff}&group=traceback&top=1000000", 300)
            found["streams"] = args.streams
            Path(args.dump).write_text(json.dumps(found))
    streams = args.streams
    lines = [
        f"tracemalloc (25 frames), server {spec.name}: what {streams} idle streams "
        f"({spec.idle_path}) allocated",
        f"total traced growth: {by_line['total'] / streams / 1024:.2f} KiB per stream "
        "(Python allocations only: not the kernel's socket buffers, not libev)",
        "",
        "by line (KiB per stream, objects per stream, where):",
    ]
    for stat in by_line["top"]:
        lines.append(
            f"{stat['size_diff'] / streams / 1024:7.2f} KiB {stat['count_diff'] / streams:6.1f}  "
            f"{_short(stat['where'][0])}"
        )
    lines += ["", "by traceback (most recent call last, innermost 12 frames):"]
    for stat in by_trace["top"]:
        lines.append(
            f"{stat['size_diff'] / streams / 1024:7.2f} KiB {stat['count_diff'] / streams:6.1f}"
        )
        lines += [f"        {_short(frame)}" for frame in stat["where"][-12:]]
    write(f"mem-{spec.name}", lines)


def split_memory(args: argparse.Namespace) -> None:
    """RSS per idle stream, split by allocator (``instrument.memory``), as S1 opens them."""
    spec = SERVERS[args.server]
    snapshots: dict[str, dict[str, int]] = {}
    with Server(spec, env=_env(args)) as server:

        def read(name: str) -> Callable[[], None]:
            def get() -> None:
                snapshots[name] = get_json("127.0.0.1", server.port, "/bench/memory", 60)

            return get

        hold_streams(server, args.streams, read("before"), read("after"))
    before, after = snapshots["before"], snapshots["after"]
    streams = args.streams

    def per(key: str) -> float:
        return float(after.get(key, 0) - before.get(key, 0)) / streams

    rss = per("smaps_Rss")
    heap = per("malloc_arena") + per("malloc_hblkhd")
    arenas = per("pymalloc_arenas") * 2**20
    pools = sum(
        per(key)
        for key in (
            "pymalloc_allocated",
            "pymalloc_available",
            "pymalloc_pool_headers",
            "pymalloc_quantization",
        )
    )
    rows = [
        ("RSS (smaps_rollup Rss)", rss),
        ("  of it anonymous", per("smaps_Anonymous")),
        ("glibc malloc: heap grown (arena + hblkhd)", heap),
        ("  in use (uordblks + hblkhd)", per("malloc_uordblks") + per("malloc_hblkhd")),
        ("  free in the heap (fordblks)", per("malloc_fordblks")),
        ("pymalloc: arenas grown (1 MiB each)", arenas),
        ("  allocated blocks", per("pymalloc_allocated")),
        ("  used pools (blocks, free blocks, headers, rounding)", pools),
        ("  unused pools", per("pymalloc_unused_pools")),
        ("RSS - malloc heap - pymalloc used pools (other mmaps)", rss - heap - pools),
    ]
    lines = [
        f"RSS per idle stream by allocator, server {spec.name}, {streams} streams "
        f"({spec.idle_path}), /bench/memory before and after (bytes per stream)",
        "",
    ]
    lines += [f"{value:9.0f}  {name}" for name, value in rows]
    lines += ["", f"mappings: {before.get('mappings')} -> {after.get('mappings')}"]
    write(f"split-{spec.name}", lines)


def measure_levers(args: argparse.Namespace) -> None:
    """Ours against ours with a proposed change patched in (benchmarks/apps_levers.py).

    S3 for the encoder's fast path; S2 at 10 events/s and S1 idle CPU for the
    runner's single-``send`` write. The servers alternate, ``--reps`` times.
    """
    import statistics

    def s3(server: Server) -> dict[str, float]:
        job = {"scenario": "single", "host": "127.0.0.1", "port": server.port}
        job.update(pid=server.pid, warmup=0.3, window=2.0)
        result = core.run_client(job, timeout=60)
        return {"events/s": result["events_per_s"]}

    def s2(server: Server) -> dict[str, float]:
        job = {
            "scenario": "fanout",
            "host": "127.0.0.1",
            "port": server.port,
            "pid": server.pid,
            "path": server.spec.fanout_path,
            "subscribers": 1000,
            "sat_seconds": 0.5,
            "window": 100,
            "burst": 10,
            "rate": 10.0,
            "lat_seconds": 4.0,
            "drain_timeout": 3.0,
        }
        lat = core.run_client(job, timeout=120)["lat"][0]
        return {
            "p50 ms": lat["p50_ms"],
            "p99 ms": lat["p99_ms"],
            "us CPU per delivery": lat["server_cpu_pct"] * 1e4 / (1000 * lat["rate"]),
        }

    pairs = (("S3", s3, "ours", "ours-lever-encode"), ("S2", s2, "ours", "ours-lever-sendall"))
    lines = [f"proposed changes measured against the library as it is, {args.reps} reps, medians"]
    for scenario, run, base, lever in pairs:
        figures: dict[str, list[dict[str, float]]] = {base: [], lever: []}
        with Server(SERVERS[base]) as one, Server(SERVERS[lever]) as two:
            for _ in range(args.reps):
                for server in (one, two):
                    figures[server.spec.name].append(run(server))
        for name, reps in figures.items():
            medians = {k: statistics.median(r[k] for r in reps) for k in reps[0]}
            shown = ", ".join(f"{k} {v:,.1f}" for k, v in medians.items())
            lines.append(f"{scenario} {name}: {shown}")
    write("levers", lines)


def _env(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.env)


def _short(where: str) -> str:
    for marker in ("site-packages/", "/work/main/", "/tmp/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def write(name: str, lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    out = RESULTS / f"profile-{name}.txt"
    out.write_text(text)
    print(text)
    print(f"wrote {out.relative_to(ROOT)}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("command", choices=("s2", "s3", "mem", "split", "idle", "levers"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--server", default="ours")
    parser.add_argument("--phase", choices=("lat", "sat"), default="sat")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--ref", help="profile the library of this commit")
    parser.add_argument(
        "--env", action="append", default=[], help="mem, split: NAME=VALUE for the server"
    )
    parser.add_argument("--dump", help="mem: also write every traceback's growth (JSON) here")
    args = parser.parse_args()
    raise_fd_limit()
    if args.ref:
        snapshot = tempfile.TemporaryDirectory(prefix="bench-")
        core.export(args.ref, Path(snapshot.name))
        servers.use_source(Path(snapshot.name))
    if args.command != "levers":
        why = SERVERS[args.server].missing()
        if why is not None:
            sys.exit(f"{args.server} cannot run here: {why}")
    if args.command == "levers":
        measure_levers(args)
    elif args.command == "mem":
        profile_memory(args)
    elif args.command == "split":
        split_memory(args)
    else:
        profile_load(args)


if __name__ == "__main__":
    main()
