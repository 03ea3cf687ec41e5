"""What presence costs: 10,000 streams over 1,000 channels, gunicorn -w 2, Redis.

The same app (``benchmarks/presence_app.py``, the channels blueprint under
``gunicorn -c python:flask_sse_stream.gunicorn_conf -w 2`` with our worker
and the Redis broker) runs twice in one run, presence off and then on
(``SSE_PRESENCE = ["room:*"]``: every stream has its own identity, and
every channel gets join events). A client in this process opens N streams
over C channels (N/C per channel), ``BATCH`` at a time, waits for each
stream's first bytes, keeps them open and idle for ``--idle`` seconds (the
workers renew their leases every ``SSE_PRESENCE_TTL`` / 3 = 5 s), then
closes them all. Measured, for both runs:

* RSS of the two workers (``VmRSS``), before and with the streams open;
* the workers' CPU time (``utime + stime``) to open the streams, while idle,
  and in the 10 s after closing them (the 5 s grace, then the leaves), and
  the presence keys still in Redis then;
* Redis's ``used_memory`` and CPU (``INFO``) with the streams open, and its
  CPU while idle;
* the wall time to open every stream.

Figures are ratios of "on" to "off", measured back to back on one machine.
Run: ``python benchmarks/presence.py [--streams 10000] [--channels 1000]
[--idle 30]``; it writes ``benchmarks/results/presence.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import read_cpu_seconds
from servers import HOST, Redis, free_port, raise_fd_limit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "presence.json"
BATCH = 500
SETTLE = 10.0


def children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "--ppid", str(pid), "-o", "pid="], check=False, capture_output=True, text=True
    )
    return [int(p) for p in out.stdout.split()]


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_s(pids: list[int]) -> float:
    return sum(read_cpu_seconds(pid) for pid in pids)


def redis_info(port: int) -> dict[str, float]:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"INFO\r\n")
        data = b""
        while True:
            data += sock.recv(1 << 16)
            head, _, rest = data.partition(b"\r\n")
            if len(rest) >= int(head[1:]):
                break
    info = {}
    for line in rest.decode().splitlines():
        key, _, value = line.partition(":")
        if key in ("used_memory", "used_cpu_sys", "used_cpu_user", "db0"):
            info[key] = value
    keys = int(str(info.get("db0", "keys=0")).split(",")[0].split("=")[1])
    return {
        "memory": float(info["used_memory"]),
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "keys": keys,
    }


def open_streams(port: int, streams: int, channels: int) -> list[socket.socket]:
    """Open ``streams`` streams, ``BATCH`` at a time; wait for each one's first bytes."""
    opened: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    for start in range(0, streams, BATCH):
        waiting = set()
        for n in range(start, min(streams, start + BATCH)):
            sock = socket.create_connection((HOST, port))
            target = f"/events?channel=room:{n % channels}&user=u{n}"
            sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            waiting.add(sock)
            opened.append(sock)
        deadline = time.monotonic() + 60
        while waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(waiting)} streams never answered")
            for key, _ in selector.select(1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock.recv(65536) and sock in waiting:
                    waiting.discard(sock)
                    selector.unregister(sock)
    return opened


def drain(socks: list[socket.socket]) -> None:
    """Read what the streams received meanwhile (join events), so no buffer fills."""
    for sock in socks:
        try:
            while sock.recv(65536):
                pass
        except BlockingIOError:
            pass


def run(presence: bool, streams: int, channels: int, idle: float) -> dict[str, Any]:
    redis = Redis()
    port = free_port()
    env = {
        **os.environ,
        "SSE_BROKER_URL": redis.url,
        "BENCH_PRESENCE": "1" if presence else "0",
        "PYTHONPATH": str(ROOT),
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:flask_sse_stream.gunicorn_conf",
        "-w",
        "2",
        "--bind",
        f"{HOST}:{port}",
        "--no-control-socket",
        "benchmarks.presence_app:app",
    ]
    server = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while len(children(server.pid)) < 2 or not _answers(port):
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.1)
        for _ in range(20):  # a first request on each worker (imports, the broker)
            _answers(port)
        workers = children(server.pid)
        rss_before = rss_kib(workers)
        cpu0, redis0 = cpu_s(workers), redis_info(redis.port)
        started = time.monotonic()
        socks = open_streams(port, streams, channels)
        open_wall = time.monotonic() - started
        time.sleep(2)  # let the last batched presence updates land
        drain(socks)
        cpu1, redis1 = cpu_s(workers), redis_info(redis.port)
        rss_open = rss_kib(workers)
        time.sleep(idle)
        drain(socks)
        cpu2, redis2 = cpu_s(workers), redis_info(redis.port)
        for sock in socks:
            sock.close()
        # The same window for both runs: the grace period (5 s) and the leaves.
        time.sleep(SETTLE)
        cpu3, redis3 = cpu_s(workers), redis_info(redis.port)
        return {
            "presence": presence,
            "streams": streams,
            "channels": channels,
            "idle_s": idle,
            "open_wall_s": round(open_wall, 2),
            "rss_before_kib": rss_before,
            "rss_open_kib": rss_open,
            "rss_per_stream_kib": round((rss_open - rss_before) / streams, 2),
            "cpu_open_s": round(cpu1 - cpu0, 2),
            "cpu_open_us_per_stream": round((cpu1 - cpu0) / streams * 1e6, 1),
            "cpu_idle_s": round(cpu2 - cpu1, 2),
            "cpu_idle_pct_of_a_core": round((cpu2 - cpu1) / idle * 100, 2),
            "cpu_close_s": round(cpu3 - cpu2, 2),
            "presence_keys_after_close": _presence_keys(redis.port),
            "redis_memory_open_mib": round(redis1["memory"] / 2**20, 2),
            "redis_cpu_open_s": round(redis1["cpu"] - redis0["cpu"], 2),
            "redis_cpu_idle_s": round(redis2["cpu"] - redis1["cpu"], 2),
            "redis_cpu_close_s": round(redis3["cpu"] - redis2["cpu"], 2),
            "redis_keys_open": redis1["keys"],
        }
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        redis.stop()


def _presence_keys(port: int) -> int:
    """Presence keys left in Redis."""
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"EVAL \"return #redis.call('KEYS', 'sse:presence:*')\" 0\r\n")
        reply = sock.recv(64)
    return int(reply[1:].split(b"\r\n")[0])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(
                f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()
            )
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--channels", type=int, default=1_000)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    raise_fd_limit()
    runs = [run(on, args.streams, args.channels, args.idle) for on in (False, True)]
    off, on = runs
    ratios = {
        key: round(on[key] / off[key], 2) if off[key] else None
        for key in (
            "rss_per_stream_kib",
            "cpu_open_us_per_stream",
            "cpu_idle_s",
            "redis_memory_open_mib",
            "open_wall_s",
        )
    }
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    result = {
        "commit": commit,
        "command": " ".join(["python", "benchmarks/presence.py", *sys.argv[1:]]),
        "off": off,
        "on": on,
        "on_over_off": ratios,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
