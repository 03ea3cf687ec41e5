"""Slow consumers (issue 14): a ticker to many subscribers, a few of them throttled.

The server (our runner, ``benchmarks/slow_consumers_app.py``) publishes
``--rate`` events a second over ``--keys`` keys on channel ``ticker`` (in
bursts every ``--tick`` seconds, 10 ms by default, each event published with
its key) to ``--subscribers`` subscribers of the channels blueprint, ``--slow``
of which read at most
``--slow-rate`` bytes a second through a 2 KiB receive buffer; the others read
as fast as they can, ``--readers`` processes of raw sockets that check every
event's number without decoding it (``benchmarks/readers.py``). The same run
is made with the ``ticker`` channel under ``disconnect`` (the peer) and under
``conflate``, alternately, ``--repeat`` times each. ``SSE_QUEUE_SIZE`` is
``--queue`` (default 100: one conflation window, a value per key).

Figures (medians over the repeats):

* the share of fast subscribers that got every event, in order;
* per slow subscriber: events received, and the age of what it received
  (receipt time minus publish time), in seconds and in conflation windows
  (``keys / rate`` seconds: the time it takes every key to change once);
  whether it got each key's last value before the end of the run;
* the broker's queued events at the end of publishing (per slow subscriber:
  at most one window under ``conflate``), and the counters;
* server RSS sampled every 0.5 s by the server itself: first, max, last;
* the wall time of one ``sse.publish()`` (history, fan-out) and the server's
  CPU time per published event, and their ratio ``conflate / disconnect``;
* whether the server kept the rate (events published / ``rate x seconds``), and
  where the CPU went while it published: the server's share of a core, the
  clients' (reader processes and this one), and the whole machine's busy cores
  (the rest is other processes), to tell what saturates.

Run: ``python benchmarks/slow_consumers.py [--subscribers 1000] [--tick 0.02] [--seconds 10]``;
it writes ``benchmarks/results/slow-consumers.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import (
    ChunkedDecoder,
    SSEDecoder,
    raise_fd_limit,
    read_cpu_seconds,
)
from readers import Readers

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
RESULT = ROOT / "benchmarks" / "results" / "slow-consumers.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http(port: int, method: str, path: str) -> Any:
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


class Slow(threading.Thread):
    """A subscriber that reads at most ``rate`` bytes a second through a small buffer."""

    def __init__(self, port: int, rate: float, mss: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        if mss:
            # A real network's segment size: on loopback (64 KiB segments) the
            # server's send buffer would grow to megabytes for this connection.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        self.sock.connect((HOST, port))
        self.sock.sendall(f"GET /events?channel=ticker HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        self.sock.settimeout(0.05)
        self.rate = rate
        self.stop_at = stop
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.closed = False
        self.unthrottled_at = 0.0
        """When the publisher stopped and this client began to read at full speed."""

    def run(self) -> None:
        head, chunked, sse = b"", ChunkedDecoder(), SSEDecoder()
        budget, last = 0.0, time.monotonic()
        while not self.stop_at.is_set():
            now = time.monotonic()
            if self.unthrottled_at:
                budget = 65536.0
            else:
                budget = min(budget + (now - last) * self.rate, 4096.0)
            last = now
            if budget < 256:
                time.sleep(0.02)
                continue
            try:
                data = self.sock.recv(int(budget))
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            budget -= len(data)
            received = time.time()
            if head is not None:
                head += data
                if b"\r\n\r\n" not in head:
                    continue
                data = head.split(b"\r\n\r\n", 1)[1]
                head = None  # type: ignore[assignment]
            for _, value in sse.feed(chunked.feed(data)):
                self.received.append((received, json.loads(value)))
            if chunked.done:
                self.closed = True
                return

    def close(self) -> None:
        self.sock.close()


def machine_seconds() -> dict[str, float]:
    """CPU seconds of the whole machine so far, by kind, from ``/proc/stat``."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = map(
            int, stat.readline().split()[1:9]
        )
    ticks = os.sysconf("SC_CLK_TCK")
    return {
        "user": (user + nice) / ticks,
        "system": system / ticks,
        "softirq": (irq + softirq) / ticks,
        "steal": steal / ticks,
        "idle": (idle + iowait) / ticks,
    }


def wait_for_quiet(idle_cores: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) for a second in which ``idle_cores`` cores were idle.

    The machine is shared: a run measured beside another process's busy loop
    measures the sharing. Returns the idle cores of the last second sampled.
    """
    deadline = time.monotonic() + timeout
    while True:
        before = machine_seconds()["idle"]
        time.sleep(1.0)
        idle = machine_seconds()["idle"] - before
        if idle >= idle_cores or time.monotonic() > deadline:
            return idle


def preemptions(pid: int) -> int:
    """How often the process was switched out while it could run (another wanted the CPU)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("nonvoluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def start_server(policy: str, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    """Our runner serving the benchmark app, ready."""
    port = free_port()
    env = dict(
        os.environ,
        BENCH_POLICY=policy,
        BENCH_QUEUE_SIZE=str(args.queue),
        PYTHONUNBUFFERED="1",
    )
    command = [
        sys.executable,
        "-m",
        "flask_sse_stream",
        "serve",
        "benchmarks.slow_consumers_app:app",
        "--port",
        str(port),
        "--no-access-log",
        "--drain-timeout",
        "1",
    ]
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            http(port, "GET", "/health")
            return server, port
        except (OSError, ValueError):
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("the server did not start") from None
            time.sleep(0.05)


def one_run(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    idle_before = wait_for_quiet(args.quiet, 180)
    server, port = start_server(policy, args)
    stop = threading.Event()
    slow: list[Slow] = []
    readers: Readers | None = None
    try:
        limit = int(args.rate * args.seconds * 1.1) + 1000
        readers = Readers(
            (HOST, port),
            "/events?channel=ticker",
            args.subscribers - args.slow,
            processes=args.readers,
            limit=limit,
            every=args.read_every,
        )
        slow = [Slow(port, args.slow_rate, args.slow_mss, stop) for _ in range(args.slow)]
        for sub in slow:
            sub.start()
        deadline = time.monotonic() + 60
        while http(port, "GET", "/ticker")["stats"]["subscribers"].get("ticker", 0) < (
            args.subscribers
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("not every subscriber was counted")
            time.sleep(0.05)

        def clients_cpu() -> float:
            assert readers is not None
            return sum(map(read_cpu_seconds, readers.pids)) + time.process_time()

        cpu0, clients0, machine0 = read_cpu_seconds(server.pid), clients_cpu(), machine_seconds()
        preempted0 = preemptions(server.pid)
        began = time.monotonic()
        http(
            port,
            "POST",
            f"/ticker?rate={args.rate}&keys={args.keys}&seconds={args.seconds}&tick={args.tick}",
        )
        time.sleep(args.seconds)
        while not (at_end := http(port, "GET", "/ticker"))["done"]:
            time.sleep(0.05)
        wall = time.monotonic() - began
        cpu = read_cpu_seconds(server.pid) - cpu0
        clients = clients_cpu() - clients0
        machine = {
            kind: (value - machine0[kind]) / wall for kind, value in machine_seconds().items()
        }
        preempted = preemptions(server.pid) - preempted0
        published = at_end["published"]
        fast = readers.finish(published, 15)
        # The publisher stopped: the slow clients now read what was left for
        # them at full speed, until each has every key's last value.
        unthrottled = time.time()
        for sub in slow:
            sub.unthrottled_at = unthrottled
        finals = {n for n in range(max(0, published - args.keys), published)}
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline and not all(
            sub.closed or finals <= {data["n"] for _, data in sub.received[-args.keys :]}
            for sub in slow
        ):
            time.sleep(0.05)
        stop.set()
        for sub in slow:
            sub.join(5)
        final = http(port, "GET", "/ticker")
    finally:
        stop.set()
        for sub in slow:
            sub.close()
        if readers is not None:
            readers.close()
        server.terminate()
        server.wait(10)

    return summarize(
        policy,
        args,
        fast=fast,
        slow=slow,
        published=published,
        at_end=at_end,
        final=final,
        cpu=cpu,
        load={
            "idle_cores_before": idle_before,
            "wall_s": wall,
            "server_cpu_pct": 100 * cpu / wall,
            "clients_cpu_pct": 100 * clients / wall,
            "server_preempted_per_s": preempted / wall,
            "machine_busy_cores": sum(machine.values()) - machine["idle"],
            "others_cores": sum(machine.values()) - machine["idle"] - (cpu + clients) / wall,
            "machine_cores_by_kind": machine,
        },
    )


def summarize(
    policy: str,
    args: argparse.Namespace,
    *,
    fast: dict[str, int],
    slow: list[Slow],
    published: int,
    at_end: dict[str, Any],
    final: dict[str, Any],
    cpu: float,
    load: dict[str, Any],
) -> dict[str, Any]:
    """The figures of one run."""
    window = args.keys / args.rate
    ages: list[float] = []
    last_values = 0
    finals = set(range(max(0, published - args.keys), published))
    slow_received, backlog = [], []
    for sub in slow:
        slow_received.append(len(sub.received))
        ages += [r - data["t"] for r, data in sub.received if r < sub.unthrottled_at]
        backlog.append(sum(r >= sub.unthrottled_at for r, _ in sub.received))
        got = {data["n"] for _, data in sub.received}
        last_values += len(finals & got)
    rss = [kib for _, kib in at_end["rss_kib"]]
    stats = at_end["stats"]
    return {
        "policy": policy,
        "published": published,
        "published_share": published / (args.rate * args.seconds),
        **load,
        "fast_subscribers": fast["streams"],
        "fast_with_every_event": fast["complete"] / fast["streams"],
        "fast_ended": fast["eof"],
        "slow_subscribers": len(slow),
        "slow_dropped": sum(sub.closed for sub in slow),
        "slow_received_median": statistics.median(slow_received) if slow_received else 0,
        "slow_age_s_p50": statistics.median(ages) if ages else None,
        "slow_age_s_max": max(ages) if ages else None,
        "slow_age_windows_p50": statistics.median(ages) / window if ages else None,
        "slow_last_values_share": last_values / (args.keys * len(slow)) if slow else None,
        "slow_backlog_events_median": statistics.median(backlog) if backlog else None,
        "queued_at_end": stats["queued"],
        "queued_per_slow_at_end": stats["queued"] / max(1, len(slow)),
        "counters": {
            name: final["stats"][name] for name in ("conflated", "dropped_slow", "delivered")
        },
        "rss_kib_first": rss[0] if rss else None,
        "rss_kib_max": max(rss) if rss else None,
        "rss_kib_last": rss[-1] if rss else None,
        "publish_us": at_end.get("publish_us"),
        "server_cpu_us_per_event": 1e6 * cpu / published,
    }


def median_of(runs: list[dict[str, Any]], key: str, sub: str | None = None) -> float:
    values = [run[key][sub] if sub else run[key] for run in runs]
    return float(statistics.median(v for v in values if v is not None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=10)
    parser.add_argument("--slow-rate", type=float, default=2048.0, help="bytes/s")
    parser.add_argument("--rate", type=int, default=1000, help="events/s")
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--queue", type=int, default=100, help="SSE_QUEUE_SIZE")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--slow-mss", type=int, default=1400, help="0: loopback's own")
    parser.add_argument("--drain", type=float, default=15.0, help="seconds, at most")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--readers", type=int, default=2, help="processes of fast subscribers")
    parser.add_argument("--read-every", type=float, default=0.05, help="seconds, fast readers")
    parser.add_argument("--tick", type=float, default=0.01, help="seconds between publish bursts")
    parser.add_argument(
        "--quiet",
        type=float,
        default=1.5,
        help="idle cores to wait for before a run (180 s at most)",
    )
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    raise_fd_limit()
    runs: dict[str, list[dict[str, Any]]] = {"disconnect": [], "conflate": []}
    for index in range(args.repeat):
        order = ("disconnect", "conflate") if index % 2 == 0 else ("conflate", "disconnect")
        for policy in order:
            run = one_run(policy, args)
            runs[policy].append(run)
            print(json.dumps(run), flush=True)
    summary: dict[str, Any] = {}
    for policy, policy_runs in runs.items():
        summary[policy] = {
            key: median_of(policy_runs, key)
            for key in (
                "published_share",
                "server_cpu_pct",
                "clients_cpu_pct",
                "server_preempted_per_s",
                "machine_busy_cores",
                "others_cores",
                "fast_with_every_event",
                "slow_dropped",
                "slow_received_median",
                "slow_age_s_p50",
                "slow_age_s_max",
                "slow_age_windows_p50",
                "slow_last_values_share",
                "slow_backlog_events_median",
                "queued_per_slow_at_end",
                "rss_kib_first",
                "rss_kib_max",
                "rss_kib_last",
                "server_cpu_us_per_event",
            )
            if any(run[key] is not None for run in policy_runs)
        }
        summary[policy]["publish_us_mean"] = median_of(policy_runs, "publish_us", "mean")
        summary[policy]["publish_us_p99"] = median_of(policy_runs, "publish_us", "p99")
    summary["ratios_conflate_vs_disconnect"] = {
        "publish_us_mean": summary["conflate"]["publish_us_mean"]
        / summary["disconnect"]["publish_us_mean"],
        "server_cpu_us_per_event": summary["conflate"]["server_cpu_us_per_event"]
        / summary["disconnect"]["server_cpu_us_per_event"],
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    result = {
        "command": "python benchmarks/slow_consumers.py " + " ".join(sys.argv[1:]),
        "commit": commit,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "summary": summary,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
