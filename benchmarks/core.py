"""The streaming-core benchmarks: S5, S4, S1 and the heartbeat design.

Run from the repository root::

    .venv/bin/python benchmarks/core.py            # full run, < 8 minutes
    .venv/bin/python benchmarks/core.py --quick    # < 1 minute, for development

The full run writes the raw figures to ``benchmarks/results/core.json`` and
the tables into ``docs/benchmarks.md`` (between the result markers); a
quick run writes ``benchmarks/results/core-quick.json.tmp`` (ignored by
git) and prints the tables. ``--only S4,S1`` runs some scenarios; ``--render`` rebuilds the
document from the JSON without measuring.

Each server runs as its own process (see :mod:`servers`), the load comes
from separate client processes (see :mod:`client`), and every figure is the
median of the repetitions, with their min-max and the ratio to the best
peer measured in the same run (the machine is shared and noisy; the ratio
is the figure to trust).
"""

from __future__ import annotations

import argparse
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
from servers import ROOT, SERVERS, Server

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DOC = ROOT / "docs" / "benchmarks.md"


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
    idle_servers=("ours", "ours-gunicorn", "naive", "naive-timer"),
    hb_streams=(1000, 10000),
    ceiling_window=1.0,
    ceiling_connections=(1, 100),
    hb_interval=0.5,
    hb_intervals=4,
)
QUICK = Settings(
    reps=3,
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
)
STREAM_SERVERS = ("ours", "ours-gunicorn", "naive")


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


def scenario_ttfb(settings: Settings) -> dict[str, Any]:
    """S5: headers and first bytes while the producer blocks."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in STREAM_SERVERS}
    servers = [Server(SERVERS[name]) for name in STREAM_SERVERS]
    try:
        for rep in range(settings.reps):
            for server in servers:
                job = {
                    "scenario": "ttfb",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "connections": settings.ttfb_connections,
                    "block": settings.ttfb_block,
                    "stagger": 0.005,
                }
                result = run_client(job, timeout=settings.ttfb_block + 60)
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
    ours, peers = split(STREAM_SERVERS)
    return {
        "id": "S5",
        "title": f"Time to first byte, producer blocked {settings.ttfb_block:g} s",
        "what": (
            f"{settings.ttfb_connections} connections opened 5 ms apart to a stream "
            f"whose producer sleeps {settings.ttfb_block:g} s before its first event; "
            "time from connect() to the response headers and to the first body bytes."
        ),
        "params": {"connections": settings.ttfb_connections, "block_s": settings.ttfb_block},
        "servers": server_commands(STREAM_SERVERS),
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


def scenario_disconnect(settings: Settings) -> dict[str, Any]:
    """S4: from the client's close to the producer's ``finally``."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in STREAM_SERVERS}
    servers = [Server(SERVERS[name]) for name in STREAM_SERVERS]
    flags = tempfile.TemporaryDirectory()
    try:
        # A peer that only notices a close at its next write takes up to two
        # producer periods per close; its repetitions run side by side (its
        # latency is set by the period, not by load) while ours run in turn.
        slow = [s for s in servers if not s.spec.watches_disconnect]
        background = []
        for server in slow:
            for rep in range(settings.reps):
                flag = os.path.join(flags.name, f"{server.spec.name}-{rep}")
                job = _disconnect_job(server, settings, rep, flag)
                background.append((server, flag, start_client(job)))
        deadline = time.monotonic() + 60
        while not all(os.path.exists(f) for _, f, _ in background):
            if time.monotonic() > deadline:
                raise RuntimeError("the peer's streams did not open and close in 60 s")
            time.sleep(0.1)
        for rep in range(settings.reps):
            for server in servers:
                if server in slow:
                    continue
                flag = os.path.join(flags.name, f"{server.spec.name}-{rep}")
                result = run_client(_disconnect_job(server, settings, rep, flag), timeout=90)
                log(f"S4 rep {rep + 1} {server.spec.name}: p50 {result['p50_ms']:.2f} ms")
                runs[server.spec.name].append(result)
        for server, _, process in background:
            result = finish_client(process, timeout=2 * settings.close_period + 60)
            log(f"S4 {server.spec.name}: p50 {result['p50_ms']:.0f} ms")
            runs[server.spec.name].append(result)
    finally:
        for server in servers:
            server.stop()
        flags.cleanup()
    metrics = [
        Metric("p50", "close to finally, p50", "ms", pick("p50_ms")),
        Metric("p99", "close to finally, p99", "ms", pick("p99_ms")),
        Metric("max", "close to finally, max", "ms", pick("max_ms")),
        Metric("cleaned", "producers cleaned up", "", pick("cleaned_up"), lower_is_better=False),
    ]
    ours, peers = split(STREAM_SERVERS)
    return {
        "id": "S4",
        "title": "Disconnect to producer cleanup",
        "what": (
            f"{settings.closes} streams whose producer yields one probe event, then "
            f"sleeps {settings.close_period:g} s per event (gevent.sleep) and records "
            "time.time() in its finally; once every probe arrived the client closes "
            f"them one by one, {settings.close_gap * 1000:g} ms apart (a plain FIN); "
            "latency = finally time - close time."
        ),
        "params": {
            "closes": settings.closes,
            "period_s": settings.close_period,
            "gap_s": settings.close_gap,
        },
        "servers": server_commands(STREAM_SERVERS),
        "rows": aggregate(runs, metrics, ours, peers),
        "raw": runs,
    }


def scenario_idle(settings: Settings, streams: int) -> dict[str, Any]:
    """S1: memory and CPU of one worker holding idle streams."""
    names = settings.idle_servers
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for rep in range(settings.reps):
        for name in names:
            with Server(SERVERS[name]) as server:
                job = {
                    "scenario": "idle",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "pid": server.pid,
                    "streams": streams,
                    "warmup": 5,
                    "settle": settings.idle_settle,
                    "window": settings.idle_window,
                }
                result = run_client(job, timeout=settings.idle_window + 180)
                if not server.alive():
                    raise RuntimeError(f"{name} died:\n{server.log()}")
            log(
                f"S1 {streams} rep {rep + 1} {name}: {result['kib_per_stream']:.1f} KiB/stream, "
                f"{result['cpu_pct']:.2f} % CPU, {result['heartbeats_in_window']} heartbeats"
            )
            runs[name].append(result)
    metrics = [
        Metric("kib_per_stream", "RSS per idle stream", "KiB", pick("kib_per_stream")),
        Metric(
            "cpu_pct",
            f"idle CPU over {settings.idle_window:g} s",
            "% of a core",
            pick("cpu_pct"),
            # The plain naive view sends no heartbeat: compare with the one that does.
            peers=("naive-timer",) if "naive-timer" in names else None,
        ),
        Metric(
            "heartbeats",
            "heartbeats received in the window, per stream",
            "",
            lambda r: r["heartbeats_in_window"] / r["streams"],
            lower_is_better=False,
        ),
        Metric("open_s", f"time to open {streams} streams", "s", pick("open_seconds")),
        Metric("rss_after", "worker RSS with the streams open", "KiB", pick("rss_after_kib")),
    ]
    ours = [n for n in names if SERVERS[n].ours]
    # The timer variant shows the heartbeat design on a real server; the
    # ratios are to the plain naive view, as the targets are.
    peers = [n for n in names if not SERVERS[n].ours and n != "naive-timer"]
    return {
        "id": f"S1-{streams}",
        "title": f"{streams} idle streams in one worker",
        "what": (
            f"A fresh server per repetition; 5 streams opened and closed to warm up; "
            f"worker RSS (VmRSS of the serving process, gunicorn's worker) read before "
            f"and after opening {streams} streams that each delivered a probe event; "
            f"then the worker's utime+stime over {settings.idle_window:g} s with every "
            "stream idle (ours: the default 15 s heartbeat and disconnect watching on)."
        ),
        "params": {"streams": streams, "window_s": settings.idle_window},
        "servers": server_commands(names),
        "rows": aggregate(runs, metrics, ours, peers),
        "raw": runs,
    }


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
    hosts = {"breakdown": "runner", "breakdown-gunicorn": "gunicorn"}
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
            "heartbeat=None; no-flask-context = EventStream with heartbeat and disconnect "
            "watch but no Flask contexts in the producer; bare-stream = EventStream "
            "alone (producer greenlet and buffer); naive = the naive peer's view."
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 minute")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated: C0,S5,S4,S1,HB (default: all); MEM only on request",
    )
    parser.add_argument("--render", action="store_true", help="rebuild the doc from the JSON")
    parser.add_argument("--out", type=Path, help="JSON output path")
    parser.add_argument(
        "--ref",
        help="measure the library and apps of this git commit (e.g. HEAD) instead of "
        "the working tree, which others may be editing",
    )
    args = parser.parse_args(argv)
    out = (args.out or RESULTS / ("core-quick.json.tmp" if args.quick else "core.json")).resolve()
    if args.render:
        report.write_doc(DOC, json.loads(out.read_text()))
        return
    from client import raise_fd_limit

    raise_fd_limit()
    snapshot = None
    if args.ref:
        snapshot = tempfile.TemporaryDirectory(prefix="bench-")
        export(args.ref, Path(snapshot.name))
        servers.use_source(Path(snapshot.name))
    settings = QUICK if args.quick else FULL
    only = {s.strip().upper() for s in args.only.split(",") if s.strip()}
    started = time.monotonic()
    meta = machine(args.ref)
    meta["mode"] = "quick" if args.quick else "full"
    meta["date"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
    meta["command"] = " ".join([".venv/bin/python", "benchmarks/core.py", *(argv or sys.argv[1:])])
    scenarios: list[dict[str, Any]] = []
    if not only or "C0" in only:
        scenarios.append(scenario_ceiling(settings))
    if not only or "S5" in only:
        scenarios.append(scenario_ttfb(settings))
    if not only or "S4" in only:
        scenarios.append(scenario_disconnect(settings))
    if not only or "S1" in only:
        scenarios.extend(scenario_idle(settings, n) for n in settings.idle_streams)
    if not only or "HB" in only:
        scenarios.extend(scenario_heartbeat(settings, n) for n in settings.hb_streams)
    if "MEM" in only:  # diagnostic, not part of the default run
        scenarios.extend(scenario_memory(settings, n) for n in settings.idle_streams)
    if snapshot is not None:
        snapshot.cleanup()
    meta["loadavg_at_end"] = os.getloadavg()
    meta["runtime_s"] = round(time.monotonic() - started, 1)
    data = {"meta": meta, "scenarios": scenarios}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n")
    log(f"wrote {out.relative_to(ROOT)} in {meta['runtime_s']} s")
    if args.quick or only:
        print(report.results_markdown(data))
    else:
        report.write_doc(DOC, data)
        log(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
