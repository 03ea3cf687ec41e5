"""The scale scenario: as many idle streams as one machine holds (issue 18).

Run from the repository root (``make bench-scale`` runs the set in
docs/benchmarks.md, "Scale")::

    .venv/bin/python benchmarks/scale.py --server ours --workers 2 --streams 100000

One server (its processes together) and ``--clients`` load clients, each
its own process with its own loopback source address (``127.0.0.10``,
``127.0.0.11``, ...; bound before connect), so that neither one process's
descriptors nor one address's ephemeral ports (about 28,000 here) bound the
count. Every stream is proven live by its first event when it opens; then,
after the idle window, one event is published and the clients count the
streams that got it (ours: through the Redis broker, to every worker; a
peer without a broker reaches only the worker that takes the publish).

Servers:

* ``ours``: gunicorn with the shipped config (``-c
  python:flask_sse_stream.gunicorn_conf``: our GeventWorker, 15 s
  heartbeat and disconnect watch on by default), ``--worker-connections``
  raised past the streams each worker takes, the Redis broker, and streams
  of the channels blueprint (``/events?channel=bench``, each opened with an
  unknown ``Last-Event-ID`` so that it starts with the reset event);
* ``starlette`` / ``fastapi``: the peers of :mod:`peer_starlette` and
  :mod:`peer_fastapi` on ``uvicorn --workers N`` (15 s pings);
* ``naive``: :mod:`peer_naive`'s view with a 15 s timer per stream on
  ``gunicorn -k gevent``.

Figures: RSS of all the server's processes per live stream, the CPU they
use over an idle window (heartbeats included), the time from the first
connect to the last stream's first event, what the machine's available
memory lost per stream (kernel socket buffers and the clients included),
and where it stopped, with the reason. It stops opening when the machine's
available memory falls below ``--min-free-gib``. The open-file limit is the
hard limit (``ulimit -Hn``): raised to it for every process, it cannot be
raised past it without CAP_SYS_RESOURCE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import servers
from client import read_cpu_seconds, read_rss_kib
from servers import HOST, QUICK_EXIT, Server, ServerSpec, uvicorn_command

HERE = Path(__file__).resolve().parent


def _gunicorn(target: str, workers: int, connections: int, *, ours: bool) -> list[str]:
    bin_dir = servers.BIN
    config = ["-c", "python:flask_sse_stream.gunicorn_conf"] if ours else ["-k", "gevent"]
    return [
        str(bin_dir / "gunicorn"),
        *config,
        "-w",
        str(workers),
        "--worker-connections",
        str(connections),
        "--backlog",
        "4096",
        "--graceful-timeout",
        "2",
        "--log-level",
        "warning",
        target,
    ]


def spec(name: str, workers: int, per_worker: int) -> ServerSpec:
    """The server ``name`` with ``workers`` processes, each taking ``per_worker`` streams."""
    connections = per_worker + 100
    if name in ("ours", "naive"):
        target = "benchmarks.apps:app" if name == "ours" else "benchmarks.peer_naive:timer_app"
        argv = _gunicorn(target, workers, connections, ours=name == "ours")
        return ServerSpec(
            name,
            name,
            name == "ours",
            lambda port: [*argv, "-b", f"{HOST}:{port}"],
            True,
            QUICK_EXIT,
            redis_env="SSE_BROKER_URL" if name == "ours" else None,
        )
    module = {"starlette": "peer_starlette", "fastapi": "peer_fastapi"}[name]

    return ServerSpec(
        name,
        name,
        False,
        uvicorn_command(f"benchmarks.{module}:app", workers),
        True,
        peer_env=True,
    )


PATHS = {
    "ours": "/events/?channel=bench&lastEventId=probe",
    "starlette": "/idle",
    "fastapi": "/idle",
    "naive": "/idle",
}


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo += [int(c) for c in children.read().split()]
        except OSError:
            pass
    return found


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += read_rss_kib(pid)
        except (OSError, RuntimeError):
            pass
    return total


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += read_cpu_seconds(pid)
        except OSError:
            pass
    return total


def mem_available_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise RuntimeError("no MemAvailable")


def listen_overflows() -> int:
    """The kernel's count of connections dropped at a full accept queue (all sockets)."""
    with open("/proc/net/netstat") as netstat:
        lines = netstat.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def open_fds(pid: int) -> int:
    """How many descriptors process ``pid`` holds (a stream is one)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def post(port: int, path: str) -> None:
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()


def start_clients(
    args: argparse.Namespace, port: int, flags: str
) -> list[tuple[dict[str, Any], subprocess.Popen[str]]]:
    """Start the load clients, one source address each, all opening at once."""
    clients = args.clients or math.ceil(args.streams / 16000)
    per_client = math.ceil(args.streams / clients)
    procs = []
    for i in range(clients):
        job = {
            "scenario": "scale",
            "host": HOST,
            "port": port,
            "source": f"127.0.0.{10 + i}",
            "streams": min(per_client, args.streams - i * per_client),
            "path": PATHS[args.server],
            "in_flight": args.in_flight,
            "open_timeout": args.open_timeout,
            "stall": args.stall,
            "probe_timeout": 60,
            "hold_timeout": args.open_timeout + args.window + 300,
            "opened_flag": os.path.join(flags, f"opened-{i}"),
            "result_file": os.path.join(flags, f"result-{i}"),
            "stop_flag": os.path.join(flags, "stop"),
            "probe_flag": os.path.join(flags, "probe"),
            "done_flag": os.path.join(flags, "done"),
        }
        process = subprocess.Popen(
            [sys.executable, str(HERE / "client.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps(job))
        process.stdin.close()
        procs.append((job, process))
    return procs


def wait_opened(
    args: argparse.Namespace,
    server: Server,
    procs: list[tuple[dict[str, Any], subprocess.Popen[str]]],
) -> tuple[int, bool]:
    """Wait until every client holds what it could; stop them if memory runs low.

    Returns the least available memory seen (KiB) and whether it stopped them.
    """
    lowest_free = mem_available_kib()
    stopped_for_memory = False
    while not all(os.path.exists(job["opened_flag"]) for job, _ in procs):
        free = mem_available_kib()
        lowest_free = min(lowest_free, free)
        if free < args.min_free_gib * 2**20 and not stopped_for_memory:
            Path(procs[0][0]["stop_flag"]).touch()
            stopped_for_memory = True
            log(f"available memory {free / 2**20:.1f} GiB: stopped opening")
        if any(p.poll() is not None for _, p in procs):
            raise RuntimeError("a client exited early")
        if not server.alive():
            raise RuntimeError(f"the server died:\n{server.log()}")
        time.sleep(0.2)
    return lowest_free, stopped_for_memory


def probe(
    port: int, procs: list[tuple[dict[str, Any], subprocess.Popen[str]]]
) -> tuple[list[dict[str, Any]], str | None]:
    """Publish one event; return the clients' counts of the streams that got it."""
    publish_error = None
    try:
        post(port, "/bench/publish?count=1&tag=p")
    except OSError as exc:  # a server out of descriptors takes no more requests
        publish_error = f"the probe's publish failed: {exc!r}"
        log(publish_error)
    Path(procs[0][0]["probe_flag"]).touch()
    deadline = time.monotonic() + 120
    files = [Path(job["result_file"]) for job, _ in procs]
    while not all(f.exists() for f in files) and time.monotonic() < deadline:
        time.sleep(0.2)
    results = [json.loads(f.read_text()) for f in files if f.exists()]
    return results, publish_error


def run(args: argparse.Namespace) -> dict[str, Any]:
    per_worker = math.ceil(args.streams / args.workers)
    flags = tempfile.TemporaryDirectory(prefix="scale-")
    done_flag = os.path.join(flags.name, "done")
    server = Server(spec(args.server, args.workers, per_worker))
    pids = tree(server.process.pid)
    deadline = time.monotonic() + 30
    while len(pids) < args.workers + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = tree(server.process.pid)
    rss0, mem0, loadavg = rss_kib(pids), mem_available_kib(), os.getloadavg()
    log(f"{args.server} x{args.workers}: {len(pids)} processes, {rss0 / 1024:.0f} MiB")
    overflows0 = listen_overflows()
    started = time.monotonic()
    procs = start_clients(args, server.port, flags.name)
    try:
        lowest_free, stopped_for_memory = wait_opened(args, server, procs)
        opened_at = time.monotonic()
        overflows = listen_overflows() - overflows0
        opened = [json.loads(Path(job["opened_flag"]).read_text()) for job, _ in procs]
        live = sum(o["live"] for o in opened)
        log(f"{live:,} live streams in {opened_at - started:.1f} s")
        time.sleep(args.settle)
        pids = tree(server.process.pid)
        rss1, mem1 = rss_kib(pids), mem_available_kib()
        fds = sorted(open_fds(pid) for pid in pids)
        cpu0, wall0 = cpu_seconds(pids), time.monotonic()
        time.sleep(args.window)
        cpu1, wall1 = cpu_seconds(pids), time.monotonic()
        idle_cpu = 100 * (cpu1 - cpu0) / (wall1 - wall0)
        log(f"RSS {(rss1 - rss0) / max(live, 1):.1f} KiB/stream, idle CPU {idle_cpu:.1f} %")
        results, publish_error = probe(server.port, procs)
    finally:
        Path(done_flag).touch()
        for _, process in procs:
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
        log_tail = server.log()
        server.stop()
        flags.cleanup()
    received = sum(r.get("probe_received", 0) for r in results)
    failures = sorted({r["failed"] for r in results if r.get("failed")})
    return {
        "server": args.server,
        "command": servers.ServerSpec.command(spec(args.server, args.workers, per_worker)),
        "workers": args.workers,
        "clients": len(procs),
        "target": args.streams,
        "live": live,
        "open_seconds": opened_at - started,
        # A dropped connection is retried by the client's kernel after 1, 2,
        # 4, 8 s: the stalls while opening.
        "listen_overflows_while_opening": overflows,
        "open_fds_per_process": fds,
        "rss_before_mib": rss0 / 1024,
        "rss_after_mib": rss1 / 1024,
        "kib_per_stream": (rss1 - rss0) / max(live, 1),
        "machine_kib_per_stream": (mem0 - mem1) / max(live, 1),
        "lowest_available_gib": lowest_free / 2**20,
        "stopped_for_memory": stopped_for_memory,
        "idle_window_s": wall1 - wall0,
        "idle_cpu_pct": idle_cpu,
        "heartbeats_per_stream": sum(r.get("heartbeats", 0) for r in results) / max(live, 1),
        "probe_received": received,
        "publish_error": publish_error,
        "probe_latency_max_ms": max(
            (r["probe_latency"]["max_ms"] for r in results if r.get("probe_received")),
            default=None,
        ),
        "stopped_because": failures,
        "server_log_tail": log_tail[-1500:] if failures or received < live else "",
        "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "loadavg_at_start": loadavg,
    }


def table(lines: list[dict[str, Any]]) -> str:
    """The results of several runs as a markdown table, ratios to the best peer per figure."""
    peers = [r for r in lines if r["server"] != "ours"]

    def ratio(value: float, key: str, lower: bool) -> str:
        values = [r[key] for r in peers if r.get(key) is not None]
        if not values:
            return ""
        best = (min if lower else max)(values)
        return f" ({value / best:.2g}x)" if best else ""

    rows = [
        "| server | workers | live streams | RSS per stream (KiB) | idle CPU per 10,000 "
        "streams (% of a core) | time to open (s) | probe event received | stopped because |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in lines:
        r = {**run, "cpu_per_10k": 1e4 * run["idle_cpu_pct"] / max(run["live"], 1)}
        stops = "; ".join(r["stopped_because"][:2]) + (
            " ..." if len(r["stopped_because"]) > 2 else ""
        )
        probe = r["publish_error"] or f"{r['probe_received']:,} of {r['live']:,}"
        rows.append(
            f"| {r['server']} | {r['workers']} | {r['live']:,}{ratio(r['live'], 'live', False)} "
            f"| {r['kib_per_stream']:.1f}{ratio(r['kib_per_stream'], 'kib_per_stream', True)} "
            f"| {r['cpu_per_10k']:.2f} | {r['open_seconds']:.0f} | {probe} | {stops or '-'} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=sorted(PATHS), default="ours")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--clients", type=int, help="load client processes (default: 1 per 16k)")
    parser.add_argument("--in-flight", type=int, default=200, help="opening at once per client")
    parser.add_argument("--open-timeout", type=float, default=300)
    parser.add_argument(
        "--stall", type=float, default=20, help="stop when no stream opens for this long, s"
    )
    parser.add_argument("--settle", type=float, default=3)
    parser.add_argument("--window", type=float, default=20, help="idle CPU window, s")
    parser.add_argument("--min-free-gib", type=float, default=3)
    parser.add_argument("--out", type=Path, help="append the result (JSON line) to this file")
    parser.add_argument("--table", type=Path, help="print the runs of this file as a table")
    args = parser.parse_args()
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines()]))
        return
    servers.raise_fd_limit()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    result = run(args)
    line = json.dumps(result)
    print(line)
    if args.out:
        with args.out.open("a") as out:
            out.write(line + "\n")


if __name__ == "__main__":
    main()
