"""The benchmarks of issue 6: ours against the peers, side by side.

Run from the repository root::

    .venv/bin/python benchmarks/core.py --setup           # once: the peers' venv
    .venv/bin/python benchmarks/core.py --ref HEAD        # full run, < 15 minutes
    .venv/bin/python benchmarks/core.py --quick           # < 2 minutes, for development

The full run writes the raw figures to ``benchmarks/results/core.json``,
the tables into ``docs/benchmarks.md`` (between the result markers) and the
chart ``docs/benchmarks.png``; a quick run writes
``benchmarks/results/core-quick.json.tmp`` (ignored by git) and prints the
tables. ``--only S2,S3`` runs some scenarios (C0, S5, S4, S1, S2, S3; HB
and MEM only on request); ``--render`` rebuilds the document and the chart
from the JSON without measuring.

Each server runs as its own process (see :mod:`servers`), the load comes
from separate client processes (see :mod:`client`), and every figure is the
median of the repetitions, with their min-max and the ratio to the best
peer measured in the same run (the machine is shared and noisy; the ratio
is the figure to trust).
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import report
import servers
from client import read_cpu_seconds
from servers import ROOT, SERVERS, Server

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "benchmarks.png"


@dataclass(frozen=True)
class Settings:
    reps: int
    ttfb_connections: int
    ttfb_block: float
    closes: int
    close_period: float
    close_gap: float
    idle_streams: tuple[int, ...]
    idle_window: float
    idle_settle: float
    idle_servers: tuple[str, ...]
    hb_streams: tuple[int, ...]
    ceiling_window: float
    ceiling_connections: tuple[int, ...]
    hb_interval: float
    hb_intervals: int
    s1_sizes: tuple[int, ...] = (1000, 5000, 10000)
    # One whole heartbeat interval (ours and the peers' pings: 15 s): every
    # stream is beaten exactly once in it, whenever it opened. A 20 s window
    # held one or two beats per stream by its phase, and the idle CPU of one
    # server moved by a fifth between repetitions (0.65-0.84 % of a core).
    s1_window: float = 15.0
    s2_subscribers: int = 1000
    s2_sat_seconds: float = 2.0
    s2_window: int = 100
    s2_burst: int = 10
    s2_rate: float = 10.0
    s2_lat_seconds: float = 4.0
    s2_drain: float = 3.0
    s3_window: float = 2.0
    s3_warmup: float = 0.3


FULL = Settings(
    reps=3,
    ttfb_connections=50,
    ttfb_block=10.0,
    closes=100,
    close_period=30.0,
    close_gap=0.02,
    idle_streams=(1000,),
    idle_window=15.0,
    idle_settle=0.5,
    idle_servers=("ours", "ours-worker", "ours-gunicorn", "naive", "naive-timer"),
    hb_streams=(1000, 10000),
    ceiling_window=1.0,
    ceiling_connections=(1, 100),
    hb_interval=0.5,
    hb_intervals=4,
)
QUICK = Settings(
    reps=1,
    ttfb_connections=20,
    ttfb_block=0.5,
    closes=20,
    close_period=1.0,
    close_gap=0.02,
    idle_streams=(200,),
    idle_window=1.0,
    idle_settle=0.2,
    idle_servers=("ours", "naive"),
    hb_streams=(1000,),
    ceiling_window=0.3,
    ceiling_connections=(1,),
    hb_interval=0.2,
    hb_intervals=2,
    s1_sizes=(100, 300),
    s1_window=1.0,
    s2_subscribers=200,
    s2_sat_seconds=0.5,
    s2_lat_seconds=1.0,
    s2_drain=1.0,
    s3_window=0.3,
    s3_warmup=0.1,
)
OURS = ("ours", "ours-worker", "ours-gunicorn")
"""Our runner, gunicorn with our worker class, plain gunicorn -k gevent."""
PEERS = ("naive", "starlette", "fastapi", "flask-sse")
STREAM_SERVERS = OURS + PEERS
FANOUT_SERVERS = (*OURS, "ours-redis", "ours-worker-redis", "ours-gunicorn-redis", *PEERS)
SKIPPED: dict[str, str] = {}
"""Servers that could not run here, and why (reported with the results)."""


SELECTED: tuple[str, ...] = ()
"""``--servers``: run only these (a variant such as ``fastapi-str`` where its base runs)."""


def runnable(names: Iterable[str]) -> tuple[str, ...]:
    """The servers of ``names`` that can run here; the others go to :data:`SKIPPED`."""
    names = tuple(names)
    if SELECTED:
        names = tuple(
            n for n in SELECTED if n in names or any(n.startswith(f"{m}-") for m in names)
        )
    ok = []
    for name in names:
        why = SERVERS[name].missing()
        if why is None:
            ok.append(name)
        else:
            SKIPPED[name] = why
    return tuple(ok)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Running the client and the micro-benchmark as processes.


def start_client(job: dict[str, Any]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(HERE / "client.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(job))
    process.stdin.close()
    return process


def finish_client(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    assert process.stdout is not None
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError(f"the load client took more than {timeout:.0f} s") from None
    out = process.stdout.read()
    if process.returncode:
        raise RuntimeError(f"the load client failed ({process.returncode})")
    result: dict[str, Any] = json.loads(out)
    return result


def run_client(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    return finish_client(start_client(job), timeout)


# Aggregation: medians over repetitions, ratios to the best peer.


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    get: Callable[[dict[str, Any]], float | None]
    lower_is_better: bool = True
    peers: tuple[str, ...] | None = None
    """Compare with these peers only (default: the scenario's); () for no ratio."""


def aggregate(
    runs: dict[str, list[dict[str, Any]]],
    metrics: Iterable[Metric],
    ours: Iterable[str],
    peers: Iterable[str],
) -> list[dict[str, Any]]:
    """One row per metric: each server's median, min, max, and ratio to the best peer."""
    ours, peers = tuple(ours), tuple(peers)
    rows = []
    for metric in metrics:
        figures: dict[str, dict[str, Any]] = {}
        for name, reps in runs.items():
            values = [v for v in (metric.get(r) for r in reps) if v is not None]
            if values:
                figures[name] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "reps": values,
                }
        candidates = peers if metric.peers is None else metric.peers
        peer_medians = {p: figures[p]["median"] for p in candidates if p in figures}
        best = None
        if peer_medians:
            pick = min if metric.lower_is_better else max
            best = pick(peer_medians, key=lambda p: peer_medians[p])
        for figure in figures.values():
            base = figures[best]["median"] if best else None
            figure["ratio"] = figure["median"] / base if base else None
        rows.append(
            {
                "metric": metric.key,
                "label": metric.label,
                "unit": metric.unit,
                "lower_is_better": metric.lower_is_better,
                "best_peer": best,
                "servers": figures,
                "ours": [n for n in ours if n in figures],
            }
        )
    return rows


def pick(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def get(result: dict[str, Any]) -> float | None:
        value: Any = result
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return float(value) if value is not None else None

    return get


def server_commands(names: Iterable[str]) -> dict[str, str]:
    return {name: SERVERS[name].command() for name in names}


def split(names: Iterable[str]) -> tuple[list[str], list[str]]:
    specs = [SERVERS[n] for n in names]
    return [s.name for s in specs if s.ours], [s.name for s in specs if not s.ours]


# The scenarios.


def _ttfb_job(server: Server, settings: Settings) -> dict[str, Any]:
    return {
        "scenario": "ttfb",
        "host": "127.0.0.1",
        "port": server.port,
        "connections": settings.ttfb_connections,
        "block": settings.ttfb_block,
        "stagger": 0.005,
    }


def scenario_ttfb(settings: Settings) -> dict[str, Any]:
    """S5: headers and first bytes while the producer blocks.

    The peers of one repetition are measured at the same time: each client
    opens its connections and waits out the block, which costs every
    server almost nothing; ours are measured one by one meanwhile.
    """
    names = runnable(STREAM_SERVERS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    servers = [Server(SERVERS[name]) for name in names]
    try:
        for rep in range(settings.reps):
            # The peers send their first bytes only after the block: they
            # wait side by side, and ours are measured one by one meanwhile,
            # once the peers' connections are open.
            waiting = []
            for server in servers:
                if not server.spec.ours:
                    waiting.append((server, start_client(_ttfb_job(server, settings))))
            time.sleep(min(1.0, settings.ttfb_block / 2))
            for server in servers:
                if server.spec.ours:
                    result = run_client(_ttfb_job(server, settings), timeout=60)
                    log(f"S5 rep {rep + 1} {server.spec.name}: {result['first_body']}")
                    runs[server.spec.name].append(result)
            for server, process in waiting:
                result = finish_client(process, timeout=settings.ttfb_block + 60)
                log(f"S5 rep {rep + 1} {server.spec.name}: {result['first_body']}")
                runs[server.spec.name].append(result)
    finally:
        for server in servers:
            server.stop()
    metrics = [
        Metric("first_byte_p50", "first body byte, p50", "ms", pick("first_body", "p50_ms")),
        Metric("first_byte_p99", "first body byte, p99", "ms", pick("first_body", "p99_ms")),
        Metric("headers_p50", "headers complete, p50", "ms", pick("headers", "p50_ms")),
        Metric("ok", "connections with a first byte", "", pick("ok"), lower_is_better=False),
    ]
    ours, peers = split(names)
    return {
        "id": "S5",
        "title": f"Time to first byte, producer blocked {settings.ttfb_block:g} s",
        "what": (
            f"{settings.ttfb_connections} connections opened 5 ms apart to a stream "
            f"whose producer sleeps {settings.ttfb_block:g} s before its first event; "
            "time from connect() to the response headers and to the first body bytes. "
            "The peers of a repetition wait side by side while ours are measured in turn. "
            "flask-sse: a stream whose channel gets its first event after the block."
        ),
        "params": {"connections": settings.ttfb_connections, "block_s": settings.ttfb_block},
        "servers": server_commands(names),
        "rows": aggregate(runs, metrics, ours, peers),
        "raw": runs,
    }


def _disconnect_job(server: Server, settings: Settings, rep: int, flag: str) -> dict[str, Any]:
    watches = server.spec.watches_disconnect
    return {
        "scenario": "disconnect",
        "host": "127.0.0.1",
        "port": server.port,
        "prefix": f"{server.spec.name}-r{rep}",
        "closes": settings.closes,
        "period": settings.close_period,
        "gap": settings.close_gap,
        # A server that only notices at a failed write needs two writes:
        # the first after the close still succeeds.
        "wait": 10.0 if watches else 2 * settings.close_period + 10,
        "poll": 0.2 if watches else 1.0,
        "closed_flag": flag,
    }


@dataclass
class Background:
    """S4 clients of the servers that only notice a close at a write: they take minutes."""

    servers: list[Server]
    clients: list[tuple[Server, str, subprocess.Popen[str]]]
    flags: tempfile.TemporaryDirectory[str]


def start_disconnect_background(settings: Settings) -> Background:
    """Start S4 on the slow servers; it runs on while other scenarios measure.

    Their streams sleep between ticks, so they cost the machine nothing
    until they are collected by :func:`scenario_disconnect`.
    """
    names = [n for n in runnable(STREAM_SERVERS) if not SERVERS[n].watches_disconnect]
    flags = tempfile.TemporaryDirectory()
    servers = [Server(SERVERS[name]) for name in names]
    clients = []
    for server in servers:
        for rep in range(settings.reps):
            flag = os.path.join(flags.name, f"{server.spec.name}-{rep}")
            process = start_client(_disconnect_job(server, settings, rep, flag))
            clients.append((server, flag, process))
            # One at a time, and all closed before anything is measured.
            deadline = time.monotonic() + 90
            while not os.path.exists(flag):
                if process.poll() is not None:
                    raise RuntimeError(f"S4 {server.spec.name}: the client failed")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"S4 {server.spec.name}: streams not closed in 90 s")
                time.sleep(0.05)
    return Background(servers, clients, flags)


def disconnect_fast(settings: Settings, background: Background) -> dict[str, list[dict[str, Any]]]:
    """S4 on the servers that watch for a close; the slow ones run in ``background``."""
    names = runnable(STREAM_SERVERS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    slow = {s.spec.name for s in background.servers}
    servers = [Server(SERVERS[name]) for name in names if name not in slow]
    try:
        deadline = time.monotonic() + 90
        while not all(os.path.exists(f) for _, f, _ in background.clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the slow servers' streams did not open and close in 90 s")
            time.sleep(0.1)
        for rep in range(settings.reps):
            for server in servers:
                flag = os.path.join(background.flags.name, f"{server.spec.name}-{rep}")
                result = run_client(_disconnect_job(server, settings, rep, flag), timeout=90)
                log(f"S4 rep {rep + 1} {server.spec.name}: p50 {result['p50_ms']:.2f} ms")
                runs[server.spec.name].append(result)
    finally:
        for server in servers:
            server.stop()
    return runs


def scenario_disconnect(
    settings: Settings, background: Background, runs: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """S4: from the client's close to the producer's ``finally``; collects ``background``."""
    names = tuple(runs)
    try:
        for server, _, process in background.clients:
            result = finish_client(process, timeout=2 * settings.close_period + 60)
            log(f"S4 {server.spec.name}: p50 {result['p50_ms']:.0f} ms")
            runs[server.spec.name].append(result)
    finally:
        for server in background.servers:
            server.stop()
        background.flags.cleanup()
    metrics = [
        Metric("p50", "close to finally, p50", "ms", pick("p50_ms")),
        Metric("p99", "close to finally, p99", "ms", pick("p99_ms")),
        Metric("max", "close to finally, max", "ms", pick("max_ms")),
        Metric("cleaned", "producers cleaned up", "", pick("cleaned_up"), lower_is_better=False),
    ]
    ours, peers = split(names)
    return {
        "id": "S4",
        "title": "Disconnect to producer cleanup",
        "what": (
            f"{settings.closes} streams whose producer yields one probe event, then "
            f"sleeps {settings.close_period:g} s per event and records "
            "time.time() in its finally; once every probe arrived the client closes "
            f"them one by one, {settings.close_gap * 1000:g} ms apart (a plain FIN); "
            "latency = finally time - close time. flask-sse: a greenlet publishes the "
            "probe and the ticks to the stream's own channel; the finally wraps "
            "flask-sse's generator."
        ),
        "params": {
            "closes": settings.closes,
            "period_s": settings.close_period,
            "gap_s": settings.close_gap,
        },
        "servers": server_commands(names),
        "rows": aggregate(runs, metrics, ours, peers),
        "raw": runs,
    }


IDLE_SERVERS = (*OURS, "ours-worker-channels", "ours-gunicorn-channels", *PEERS)


def _idle_job(server: Server, settings: Settings, flag: str) -> dict[str, Any]:
    extra = {"redis": server.redis.pid} if server.redis is not None else {}
    return {
        "scenario": "idle",
        "host": "127.0.0.1",
        "port": server.port,
        "pid": server.pid,
        "sizes": [n for n in settings.s1_sizes if n <= (server.spec.max_streams or n)],
        "warmup": 5,
        "settle": settings.idle_settle,
        "window": settings.s1_window,
        "opened_flag": flag,
        "extra_pids": extra,
        "path": server.spec.idle_path,
    }


def scenario_idle(settings: Settings) -> dict[str, Any]:
    """S1: memory and CPU of one worker holding idle streams, at several sizes.

    One fresh server per server and repetition. The runs overlap: the next
    server starts opening its streams once the previous one has all of its
    streams open and sits in its idle window; RSS and CPU time are read per
    process, so a neighbour's work does not count (it only competes for
    the cores while it opens).
    """
    names = runnable(IDLE_SERVERS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    flags = tempfile.TemporaryDirectory()
    running: list[tuple[str, int, Server, subprocess.Popen[str]]] = []
    window = settings.s1_window

    def reap(block: bool) -> None:
        for entry in list(running):
            name, rep, server, process = entry
            if not block and process.poll() is None:
                continue
            result = finish_client(process, timeout=window + 300)
            if not server.alive():
                result["failed"] = result.get("failed") or "the server died"
            server.stop()
            running.remove(entry)
            stages = ", ".join(
                f"{n}: {st['kib_per_stream']:.1f} KiB" for n, st in result["stages"].items()
            )
            cpu = f"{result['cpu_pct']:.2f} % CPU" if "cpu_pct" in result else ""
            log(f"S1 rep {rep + 1} {name}: {stages} {cpu} {result['failed'] or ''}")
            runs[name].append(result)

    try:
        for rep in range(settings.reps):
            for name in names:
                server = Server(SERVERS[name])
                flag = os.path.join(flags.name, f"{name}-{rep}")
                process = start_client(_idle_job(server, settings, flag))
                running.append((name, rep, server, process))
                deadline = time.monotonic() + 300
                while not os.path.exists(flag) and process.poll() is None:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"S1 {name}: streams not open in 300 s")
                    time.sleep(0.05)
                reap(block=False)
        reap(block=True)
    finally:
        for _, _, server, process in running:
            process.kill()
            server.stop()
        flags.cleanup()

    def at(size: int, key: str) -> Callable[[dict[str, Any]], float | None]:
        def get(result: dict[str, Any]) -> float | None:
            stage = result["stages"].get(str(size))
            return None if stage is None or key not in stage else float(stage[key])

        return get

    largest = settings.s1_sizes[-1]
    metrics = [
        Metric(f"kib_{size}", f"RSS per idle stream at {size:,}", "KiB", at(size, "kib_per_stream"))
        for size in settings.s1_sizes
    ]
    metrics += [
        Metric(
            "redis_kib",
            "redis-server RSS per stream, at the most streams held (flask-sse)",
            "KiB",
            lambda r: next(
                (
                    float(stage["redis_kib_per_stream"])
                    for stage in reversed(list(r["stages"].values()))
                    if "redis_kib_per_stream" in stage
                ),
                None,
            ),
            peers=(),
        ),
        Metric(
            "reached",
            "streams held, all proven live",
            "",
            lambda r: max((float(n) for n in r["stages"]), default=0.0),
            lower_is_better=False,
        ),
        Metric(
            "cpu_pct",
            f"idle CPU at {largest:,} over {window:g} s",
            "% of a core",
            pick("cpu_pct"),
            # Only the peers that heartbeat (15 s pings) compare.
            peers=("starlette", "fastapi"),
        ),
        Metric(
            "heartbeats",
            "heartbeats received in the window, per stream",
            "",
            lambda r: r["heartbeats_in_window"] / r["streams"] if "streams" in r else None,
            lower_is_better=False,
            peers=(),
        ),
        Metric(f"open_{largest}", f"time to open {largest:,} streams", "s", pick("open_seconds")),
        Metric(
            "open_cpu",
            "server CPU per stream opened (the last stage)",
            "us",
            pick("open_cpu_us_per_stream"),
        ),
    ]
    ours, peers = split(names)
    return {
        "id": "S1",
        "title": "Idle streams in one worker: " + " / ".join(f"{n:,}" for n in settings.s1_sizes),
        "what": (
            "A fresh server per repetition; 5 streams opened and closed to warm up; the "
            "worker's RSS (VmRSS of the serving process: gunicorn's worker, uvicorn's "
            f"process) read before and after each stage ({', '.join(map(str, settings.s1_sizes))}"
            " streams in all), every stream proven live by a probe event; then the "
            f"worker's CPU time over {window:g} s with all {largest:,} streams idle. "
            "Heartbeats on where the server has them: ours 15 s (the default), "
            "sse-starlette and FastAPI 15 s (their default pings); the naive view and "
            "flask-sse send none. "
            "Servers overlap: the next one opens its streams while the previous one idles."
        ),
        "params": {"sizes": list(settings.s1_sizes), "window_s": window},
        "servers": server_commands(names),
        "rows": aggregate(runs, metrics, ours, peers),
        "failures": {
            name: [r["failed"] for r in reps if r.get("failed")] for name, reps in runs.items()
        },
        "raw": runs,
    }


def _fanout_job(server: Server, settings: Settings) -> dict[str, Any]:
    return {
        "scenario": "fanout",
        "host": "127.0.0.1",
        "port": server.port,
        "pid": server.pid,
        "path": server.spec.fanout_path,
        "subscribers": settings.s2_subscribers,
        "sat_seconds": settings.s2_sat_seconds,
        "window": settings.s2_window,
        "burst": settings.s2_burst,
        "rate": settings.s2_rate,
        "lat_seconds": settings.s2_lat_seconds,
        "drain_timeout": settings.s2_drain,
    }


def scenario_fanout(settings: Settings) -> dict[str, Any]:
    """S2: one channel, many subscribers: saturation throughput and steady latency."""
    names = runnable(FANOUT_SERVERS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    count = settings.s2_subscribers
    servers = [Server(SERVERS[name]) for name in names]
    try:
        for rep in range(settings.reps):
            for server in servers:
                result = run_client(_fanout_job(server, settings), timeout=300)
                if not server.alive():
                    raise RuntimeError(f"{server.spec.name} died:\n{server.log()}")
                sat, lat = result["sat"][0], result["lat"][0]
                log(
                    f"S2 rep {rep + 1} {server.spec.name}: {sat['delivered_per_s']:,.0f}/s "
                    f"(server {sat['server_cpu_pct']:.0f} %, client {sat['client_cpu_pct']:.0f} %)"
                    f"; at {settings.s2_rate:g}/s p50 {lat['p50_ms']:.1f} p99 {lat['p99_ms']:.1f}"
                    f" ms, {lat['delivered']}/{lat['expected']}"
                )
                runs[server.spec.name].append(result)
    finally:
        for server in servers:
            server.stop()
    sat = ("sat", 0)
    lat = ("lat", 0)

    def get(phase: tuple[str, int], key: str) -> Callable[[dict[str, Any]], float | None]:
        def value(result: dict[str, Any]) -> float | None:
            figure = result[phase[0]][phase[1]].get(key)
            return None if figure is None else float(figure)

        return value

    metrics = [
        Metric(
            "delivered_per_s",
            "delivered events/s at saturation",
            "events/s",
            get(sat, "delivered_per_s"),
            lower_is_better=False,
        ),
        Metric(
            "lat_p50", f"latency at {settings.s2_rate:g} events/s, p50", "ms", get(lat, "p50_ms")
        ),
        Metric(
            "lat_p99", f"latency at {settings.s2_rate:g} events/s, p99", "ms", get(lat, "p99_ms")
        ),
        Metric(
            "lat_delivered",
            "share delivered in the latency phase",
            "",
            lambda r: r["lat"][0]["delivered"] / r["lat"][0]["expected"],
            lower_is_better=False,
        ),
        Metric(
            "sat_server_cpu",
            "server CPU at saturation",
            "% of a core",
            get(sat, "server_cpu_pct"),
            peers=(),
        ),
        Metric(
            "sat_client_cpu",
            "client CPU at saturation",
            "% of a core",
            get(sat, "client_cpu_pct"),
            peers=(),
        ),
        Metric(
            "lat_server_cpu",
            f"server CPU at {settings.s2_rate:g} events/s",
            "% of a core",
            get(lat, "server_cpu_pct"),
        ),
    ]
    ours, peers = split(names)
    return {
        "id": "S2",
        "title": f"Fan-out to {count:,} subscribers of one channel",
        "what": (
            f"{count:,} subscribers of one channel (ours: the channels blueprint "
            "/events?channel=bench and sse.publish; flask-sse: its own /stream view and "
            "sse.publish through Redis; the naive view, sse-starlette and FastAPI: a queue per "
            "subscriber that the publisher puts each event into). Latency phase: the "
            f"server publishes {settings.s2_rate:g} events/s for {settings.s2_lat_seconds:g} s "
            "on its own schedule (open loop, a background greenlet or task); latency = "
            "receipt time - publish time in the data, over every delivery. Saturation "
            f"phase: the client publishes bursts of {settings.s2_burst} "
            "(POST /bench/publish) while at most "
            f"{settings.s2_window} events per subscriber are in flight, for "
            f"{settings.s2_sat_seconds:g} s; delivered events/s = deliveries / (last "
            "receipt - first publish). Events are ~64 bytes on the wire."
        ),
        "params": {
            "subscribers": count,
            "rate": settings.s2_rate,
            "lat_seconds": settings.s2_lat_seconds,
            "sat_seconds": settings.s2_sat_seconds,
            "window": settings.s2_window,
            "burst": settings.s2_burst,
        },
        "servers": server_commands(names),
        "rows": aggregate(runs, metrics, ours, peers),
        "raw": runs,
    }


def _single_job(server: Server, settings: Settings) -> dict[str, Any]:
    return {
        "scenario": "single",
        "host": "127.0.0.1",
        "port": server.port,
        "pid": server.pid,
        "warmup": settings.s3_warmup,
        "window": settings.s3_window,
    }


def scenario_single(settings: Settings) -> dict[str, Any]:
    """S3: one stream, ~50-byte events as fast as the server sends them."""
    names = runnable(STREAM_SERVERS)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    failures: dict[str, list[str]] = {}
    servers = [Server(SERVERS[name]) for name in names]
    try:
        for rep in range(settings.reps):
            for server in servers:
                if server.spec.name in failures:
                    continue
                result = run_client(_single_job(server, settings), timeout=60)
                log(
                    f"S3 rep {rep + 1} {server.spec.name}: {result['events_per_s']:,.0f}/s "
                    f"(server {result['server_cpu_pct']:.0f} %, "
                    f"client {result['client_cpu_pct']:.0f} %), gaps {result['gaps']}"
                )
                runs[server.spec.name].append(result)
                why = _unresponsive(server)
                if why is not None:
                    # A producer left running after its client closed would
                    # take a core from the servers measured after it.
                    log(f"S3 rep {rep + 1} {server.spec.name}: {why}; stopped")
                    failures[server.spec.name] = [why]
                    server.stop()
    finally:
        for server in servers:
            server.stop()
    metrics = [
        Metric(
            "events_per_s",
            "events/s on one stream",
            "events/s",
            pick("events_per_s"),
            lower_is_better=False,
        ),
        Metric("server_cpu", "server CPU", "% of a core", pick("server_cpu_pct"), peers=()),
        Metric("client_cpu", "client CPU", "% of a core", pick("client_cpu_pct"), peers=()),
        Metric("gaps", "gaps in the numbering", "", pick("gaps"), peers=()),
    ]
    ours, peers = split(names)
    return {
        "id": "S3",
        "title": "One stream, ~50-byte events as fast as possible",
        "what": (
            "A producer that yields numbered 43-character strings (51 bytes on the wire) "
            "in a loop, as users write it for each stack (ours: @sse.stream; naive: a "
            "generator framed by hand; sse-starlette: an async generator of dicts; "
            "FastAPI: an async generator of ServerSentEvent(raw_data=...); "
            "flask-sse: a greenlet calling sse.publish on the stream's channel as fast as "
            f"it returns). The client reads {settings.s3_window:g} s after a "
            f"{settings.s3_warmup:g} s warm-up and checks the numbering."
        ),
        "params": {"window_s": settings.s3_window},
        "servers": server_commands(names),
        "rows": aggregate(runs, metrics, ours, peers),
        "failures": failures,
        "raw": runs,
    }


def _unresponsive(server: Server, timeout: float = 5.0) -> str | None:
    """Why ``server`` is not fit to go on once its stream closed, or ``None``."""
    if not server.alive():
        return "the server died"
    before = read_cpu_seconds(server.pid)
    time.sleep(0.5)
    busy = (read_cpu_seconds(server.pid) - before) / 0.5
    try:
        servers.get_json(server.port, "/pid", timeout=timeout)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        return (
            f"no answer to /pid within {timeout:g} s after the client closed its stream "
            f"({type(exc).__name__}; the worker at {100 * busy:.0f} % CPU)"
        )
    return None


def scenario_ceiling(settings: Settings) -> dict[str, Any]:
    """C0: how fast the load client reads, from a server that only streams."""
    runs: dict[str, list[dict[str, Any]]] = {}
    with Server(SERVERS["null"]) as server:
        for rep in range(settings.reps):
            for connections in settings.ceiling_connections:
                job = {
                    "scenario": "ceiling",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "connections": connections,
                    "window": settings.ceiling_window,
                }
                result = run_client(job, timeout=60)
                log(f"C0 rep {rep + 1} {connections}: {result['events_per_s']:,.0f} events/s")
                runs.setdefault(f"{connections} connection(s)", []).append(result)
    metrics = [
        Metric("events_per_s", "events decoded per second", "events/s", pick("events_per_s")),
        Metric("client_cpu", "client CPU", "% of a core", pick("client_cpu_pct")),
    ]
    return {
        "id": "C0",
        "title": "The load client's ceiling",
        "what": (
            "The client against benchmarks/null_server.py, which sends one pre-built "
            "~50-byte event per chunk as fast as the socket takes it, over "
            f"{settings.ceiling_window:g} s: events decoded, stamped and kept per second. "
            "Every scenario here stays far below it."
        ),
        "params": {"window_s": settings.ceiling_window},
        "servers": server_commands(["null"]),
        "rows": aggregate(runs, metrics, list(runs), []),
        "raw": runs,
    }


BREAKDOWN = ("full", "no-heartbeat", "no-flask-context", "bare-stream", "naive")


def scenario_memory(settings: Settings, streams: int) -> dict[str, Any]:
    """MEM: RSS per idle stream with parts of our stream taken away (diagnostic)."""
    hosts = {
        name: short
        for name, short in (
            ("breakdown", "runner"),
            ("breakdown-worker", "worker"),
            ("breakdown-gunicorn", "gunicorn"),
        )
        if name in runnable([name])
    }
    runs: dict[str, list[dict[str, Any]]] = {}
    for rep in range(settings.reps):
        for name, short in hosts.items():
            for variant in BREAKDOWN:
                with Server(SERVERS[name]) as server:
                    job = {
                        "scenario": "idle",
                        "host": "127.0.0.1",
                        "port": server.port,
                        "pid": server.pid,
                        "streams": streams,
                        "warmup": 5,
                        "settle": settings.idle_settle,
                        "window": 0.1,
                        "path": f"/{variant}",
                    }
                    result = run_client(job, timeout=180)
                key = f"{variant} @ {short}"
                log(f"MEM rep {rep + 1} {key}: {result['kib_per_stream']:.1f} KiB/stream")
                runs.setdefault(key, []).append(result)
    metric = Metric("kib_per_stream", "RSS per idle stream", "KiB", pick("kib_per_stream"))
    keys = list(runs)
    return {
        "id": f"MEM-{streams}",
        "title": f"Memory per idle stream, part by part ({streams} streams)",
        "what": (
            "As S1 (fresh server per repetition, RSS before and after, every stream proven "
            "live), on benchmarks/apps_breakdown.py: full = @sse.stream; no-heartbeat = "
            "heartbeat=None; no-flask-context = EventStream with heartbeat, disconnect "
            "watch and the transport of our handlers (runner, our worker) as @sse.stream "
            "has them, but no Flask contexts in the producer; bare-stream = EventStream "
            "alone on the plain path (producer greenlet and buffer); naive = the naive "
            "peer's view. runner = our runner, worker = gunicorn -k "
            "flask_sse_stream.gunicorn.GeventWorker, gunicorn = plain gunicorn -k gevent."
        ),
        "params": {"streams": streams},
        "servers": server_commands(hosts),
        "rows": aggregate(
            runs, [metric], [k for k in keys if not k.startswith("naive")], ["naive @ gunicorn"]
        ),
        "raw": runs,
    }


def scenario_heartbeat(settings: Settings, streams: int) -> dict[str, Any]:
    """The heartbeat design: one shared loop versus a timer per stream."""
    designs = ("shared", "timer")
    runs: dict[str, list[dict[str, Any]]] = {d: [] for d in designs}
    for rep in range(settings.reps):
        for design in designs:
            job = {
                "design": design,
                "streams": streams,
                "interval": settings.hb_interval,
                "intervals": settings.hb_intervals,
            }
            out = subprocess.run(
                [sys.executable, "benchmarks/heartbeat_bench.py", json.dumps(job)],
                capture_output=True,
                text=True,
                check=True,
                cwd=servers.SOURCE,
                env=servers.child_env(),
                timeout=120,
            )
            result = json.loads(out.stdout)
            log(
                f"HB {streams} rep {rep + 1} {design}: "
                f"{result['idle_cpu_us_per_stream_per_interval']:.1f} us/stream/interval"
            )
            runs[design].append(result)
    metrics = [
        Metric(
            "per_beat",
            "idle CPU per heartbeat sent (scans included)",
            "us",
            pick("idle_cpu_us_per_beat"),
        ),
        Metric(
            "per_stream",
            "idle CPU per stream per interval",
            "us",
            pick("idle_cpu_us_per_stream_per_interval"),
        ),
        Metric(
            "pct_15s",
            "idle CPU at a 15 s interval, one beat per stream",
            "% of a core",
            pick("idle_cpu_pct_at_15s"),
        ),
        Metric(
            "wakeup",
            "CPU per wake-up (loop pass or timer fire)",
            "us",
            pick("cpu_us_per_wakeup"),
            peers=(),
        ),
        Metric(
            "scan",
            "scan only, per stream per wake-up",
            "ns",
            pick("scan_ns_per_stream_per_wakeup"),
        ),
        Metric(
            "beats",
            "heartbeats per stream per interval (ideal: 1)",
            "",
            pick("beats_per_stream_per_interval"),
            peers=(),
        ),
        Metric("hot", "CPU per event to a waiting stream", "us", pick("hot_us_per_event")),
        Metric(
            "rss", "RSS per stream (greenlet + queue)", "KiB", pick("rss_kib_per_stream"), peers=()
        ),
    ]
    return {
        "id": f"HB-{streams}",
        "title": f"Heartbeat design, {streams} idle streams (one process, no sockets)",
        "what": (
            "Each stream is a bounded gevent Queue with a handler greenlet blocked on "
            "it. shared = the library's flask_sse_stream.heartbeat loop (wakes 3 times "
            "per interval, compares last_write, queues a comment); timer = each handler "
            f"waits with Queue.get(timeout=interval). Interval {settings.hb_interval:g} s, "
            f"CPU (process_time) over {settings.hb_intervals} intervals, phases random. "
            "The 15 s figure is the CPU per heartbeat times one heartbeat per stream per "
            "15 s (the short interval can saturate the timer design at 10,000 streams, "
            "which then sends fewer heartbeats than due)."
        ),
        "params": {
            "streams": streams,
            "interval_s": settings.hb_interval,
            "intervals": settings.hb_intervals,
        },
        "servers": {
            "shared": "flask_sse_stream.heartbeat (ours)",
            "timer": "Queue.get(timeout=interval) per stream",
        },
        "rows": aggregate(runs, metrics, ["shared"], ["timer"]),
        "raw": runs,
    }


# Where and with what it ran.


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def export(ref: str, into: Path) -> None:
    """Write the library of commit ``ref`` and the working tree's benchmarks into ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "flask_sse_stream"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "benchmarks").mkdir()
    for script in HERE.glob("*.py"):
        shutil.copy2(script, into / "benchmarks" / script.name)


def machine(ref: str | None) -> dict[str, Any]:
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        mem_kib = int(meminfo.readline().split()[1])
    import gevent

    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in ("gevent", "greenlet", "gunicorn", "flask", "werkzeug", "flask-sse-stream")
        },
        "gevent_loop": gevent.config.loop.__module__,
        "commit": _git("rev-parse", "--short", ref or "HEAD"),
        # Others work in the same tree: say when the measured library is not a commit.
        "library_changes": []
        if ref
        else _git("status", "--porcelain", "flask_sse_stream").splitlines(),
    }


def setup() -> None:
    """Make the benchmark environment: a venv with the peers, matplotlib and py-spy."""
    venv = servers.PEERS_VENV
    if not (venv / "bin" / "python").exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    requirements = HERE / "requirements-peers.txt"
    log(f"installing {requirements.relative_to(ROOT)} into {venv}")
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-r", str(requirements)], check=True
    )


def peer_versions() -> dict[str, str]:
    """The versions in the benchmark environment (the peers run there)."""
    python = servers.PEERS_BIN / "python"
    if not python.exists():
        return {}
    names = [
        "sse-starlette",
        "fastapi",
        "pydantic",
        "starlette",
        "uvicorn",
        "uvloop",
        "httptools",
        "flask-sse",
        "redis",
    ]
    code = (
        "import json, sys\nfrom importlib import metadata\n"
        "print(json.dumps({n: metadata.version(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=True
    )
    versions: dict[str, str] = json.loads(out.stdout)
    binary = servers.redis_server()
    if binary:
        answer = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
        versions["redis-server"] = answer.stdout.split()[2].removeprefix("v=")
    return versions


def chart(data_path: Path) -> None:
    """Draw docs/benchmarks.png with the benchmark environment's matplotlib."""
    python = servers.PEERS_BIN / "python"
    if not python.exists():
        log("no benchmark environment: no chart (run core.py --setup)")
        return
    subprocess.run(
        [str(python), str(HERE / "chart.py"), str(data_path), str(CHART)], check=True, cwd=ROOT
    )
    log(f"wrote {CHART.relative_to(ROOT)}")


def measure(settings: Settings, wanted: Callable[[str], bool]) -> list[dict[str, Any]]:
    """Run the wanted scenarios; return them in the document's order."""
    scenarios: list[dict[str, Any]] = []
    if wanted("C0"):
        scenarios.append(scenario_ceiling(settings))
    # S4's slow servers take two producer periods: they run on beside S5 and S1-S3.
    background = start_disconnect_background(settings) if wanted("S4") else None
    try:
        if wanted("S5"):
            scenarios.append(scenario_ttfb(settings))
        fast = disconnect_fast(settings, background) if background is not None else None
        if wanted("S1"):
            scenarios.append(scenario_idle(settings))
        if wanted("S2"):
            scenarios.append(scenario_fanout(settings))
        if wanted("S3"):
            scenarios.append(scenario_single(settings))
    except BaseException:
        if background is not None:  # its servers would outlive the run
            for server in background.servers:
                server.stop()
        raise
    if background is not None and fast is not None:
        scenarios.append(scenario_disconnect(settings, background, fast))
    if wanted("HB"):
        scenarios.extend(scenario_heartbeat(settings, n) for n in settings.hb_streams)
    if wanted("MEM"):  # diagnostic, not part of the default run
        scenarios.extend(scenario_memory(settings, n) for n in settings.idle_streams)
    return scenarios


ORDER = ("C0", "S1", "S2", "S3", "S4", "S5", "HB", "MEM")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 2 minutes")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: C0,S1,S2,S3,S4,S5 (default: all); HB, MEM only on request",
    )
    parser.add_argument(
        "--servers",
        default="",
        help="comma-separated server names (servers.py) to run, e.g. starlette,fastapi,fastapi-str",
    )
    parser.add_argument("--reps", type=int, help="repetitions (default: 3, --quick 1)")
    parser.add_argument("--setup", action="store_true", help="make the peers' venv and stop")
    parser.add_argument("--render", action="store_true", help="rebuild doc and chart from JSON")
    parser.add_argument("--out", type=Path, help="JSON output path")
    parser.add_argument(
        "--ref",
        help="measure the library and apps of this git commit (e.g. HEAD) instead of "
        "the working tree, which others may be editing",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.setup:
        setup()
        return
    out = (args.out or RESULTS / ("core-quick.json.tmp" if args.quick else "core.json")).resolve()
    if args.render:
        report.write_doc(DOC, json.loads(out.read_text()))
        chart(out)
        return
    from client import raise_fd_limit

    raise_fd_limit()
    snapshot = None
    if args.ref:
        snapshot = tempfile.TemporaryDirectory(prefix="bench-")
        export(args.ref, Path(snapshot.name))
        servers.use_source(Path(snapshot.name))
    settings = QUICK if args.quick else FULL
    if args.reps:
        settings = dataclasses.replace(settings, reps=args.reps)
    global SELECTED
    SELECTED = tuple(n.strip() for n in args.servers.split(",") if n.strip())
    unknown = [n for n in SELECTED if n not in SERVERS]
    if unknown:
        parser.error(f"unknown servers {unknown}; see benchmarks/servers.py")
    only = {s.strip().upper() for s in args.only.split(",") if s.strip()}

    def wanted(scenario: str) -> bool:
        return scenario in only or (not only and scenario not in ("HB", "MEM"))

    started = time.monotonic()
    meta = machine(args.ref)
    meta["peer_versions"] = peer_versions()
    meta["mode"] = "quick" if args.quick else "full"
    meta["reps"] = settings.reps
    meta["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    meta["command"] = " ".join([".venv/bin/python", "benchmarks/core.py", *(argv or sys.argv[1:])])
    scenarios = measure(settings, wanted)
    scenarios.sort(key=lambda sc: ORDER.index(sc["id"].split("-")[0]))
    if snapshot is not None:
        snapshot.cleanup()
    meta["skipped"] = dict(SKIPPED)
    meta["loadavg_at_end"] = os.getloadavg()
    meta["runtime_s"] = round(time.monotonic() - started, 1)
    data = {"meta": meta, "scenarios": scenarios}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    log(f"wrote {os.path.relpath(out, ROOT)} in {meta['runtime_s']} s")
    if args.quick or only:
        print(report.results_markdown(data))
    else:
        report.write_doc(DOC, data)
        log(f"wrote {DOC.relative_to(ROOT)}")
        chart(out)


if __name__ == "__main__":
    main()
