"""Compressed streams (issue 15): ratio, memory per stream, CPU per event, arrival latency.

Run from the repository root with the project's virtualenv (it needs the
``brotli`` extra, which ``make .venv/bin/.installed`` installs)::

    .venv/bin/python benchmarks/compression.py            # all, ~3 min
    .venv/bin/python benchmarks/compression.py --quick    # smaller, ~1 min

It writes ``benchmarks/results/compression.json`` and the chart
``docs/compression.svg``. Four parts:

* ``settings``: for gzip windows and memory levels and brotli windows, the
  compression ratio of a JSON and an HTML-fragment stream, each event
  flushed on its own as the library does, and the memory one compressor
  holds (RSS of a fresh process holding 1,000 and 10,000 of them, each
  having compressed a few events, divided by their number);
* ``sizes``: where compression stops paying: ratio and CPU per event for
  events from 64 bytes to 4 KiB, with the library's defaults;
* ``wire``: the library's runner, a channel with 100 subscribers and a
  publisher at 20 events/s, plain against gzip against br (the same run):
  bytes on the wire per event, server CPU per delivered event, and the
  arrival latency of each event (publish to decoded, same machine clock);
* the chart.

The payloads are made here, seeded, so every run compresses the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import selectors
import socket
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from client import ChunkedDecoder, SSEDecoder, percentile  # noqa: E402

from flask_sse_stream import Event  # noqa: E402
from flask_sse_stream._compress import Compression  # noqa: E402
from flask_sse_stream._core import chunk  # noqa: E402
from flask_sse_stream.testing import decoder  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "compression.json"
CHART = ROOT / "docs" / "compression.svg"
HOSTS = [f"web-{n:02d}" for n in range(1, 9)]
SERVICES = ["nginx", "gunicorn", "postgres", "redis", "celery", "cron"]


def json_event(rng: random.Random, stamp: float = 0.0) -> dict[str, Any]:
    """A dashboard update: ~1 KB of JSON whose keys repeat in every event."""
    return {
        "type": "host.metrics",
        "sent_at": stamp or time.time(),
        "host": rng.choice(HOSTS),
        "cpu": {k: round(rng.uniform(0, 100), 2) for k in ("user", "system", "iowait", "idle")},
        "memory": {
            "used_bytes": rng.randrange(1 << 30, 1 << 34),
            "cached_bytes": rng.randrange(1 << 28, 1 << 32),
            "total_bytes": 17179869184,
        },
        "disks": [
            {
                "mount": mount,
                "used_bytes": rng.randrange(1 << 30, 1 << 40),
                "total_bytes": 1099511627776,
                "read_ops_per_s": rng.randrange(0, 5000),
                "write_ops_per_s": rng.randrange(0, 5000),
            }
            for mount in ("/", "/var/lib/postgresql")
        ],
        "services": [
            {
                "name": name,
                "status": rng.choice(("up", "up", "up", "degraded")),
                "latency_ms": round(rng.lognormvariate(2, 0.5), 1),
                "requests_per_s": rng.randrange(0, 2000),
            }
            for name in SERVICES
        ],
    }


def html_event(rng: random.Random, stamp: float = 0.0) -> str:
    """A Datastar/htmx-style fragment: one table row of an orders page, ~1 KB."""
    order = rng.randrange(10_000, 99_999)
    status = rng.choice(("paid", "shipped", "pending", "refunded"))
    cells = "".join(
        f'<td class="px-4 py-2 text-sm text-gray-700 whitespace-nowrap">{value}</td>'
        for value in (
            f"#{order}",
            rng.choice(("Ada Lovelace", "Grace Hopper", "Alan Turing", "Edsger Dijkstra")),
            f"{rng.uniform(5, 900):.2f} EUR",
            f'<span class="inline-flex rounded-full px-2 text-xs font-semibold '
            f'status-{status}">{status}</span>',
            f'<time datetime="2026-12-02T{rng.randrange(24):02d}:{rng.randrange(60):02d}">'
            "today</time>",
        )
    )
    return (
        f'elements <tr id="order-{order}" class="border-b border-gray-200 hover:bg-gray-50" '
        f'data-sent-at="{stamp or time.time():.6f}">{cells}'
        f'<td class="px-4 py-2 text-right"><button class="btn btn-sm" '
        f"data-on-click=\"@post('/orders/{order}/refund')\">Refund</button></td></tr>"
    )


def frames(kind: str, count: int, seed: int = 15) -> list[bytes]:
    """``count`` encoded events of a payload kind, as the library would send them."""
    rng = random.Random(seed)
    stamp = 1764640000.0
    if kind == "json":
        return [Event(json.dumps(json_event(rng, stamp + i))).encode() for i in range(count)]
    if kind == "html":
        return [
            Event(html_event(rng, stamp + i), event="datastar-patch-elements").encode()
            for i in range(count)
        ]
    # "json64" .. "json4096": JSON events of about that many bytes.
    size = int(kind.removeprefix("json"))
    out = []
    for i in range(count):
        full = json_event(rng, stamp + i)
        value: Any
        if size <= 64:
            value = {"seq": i, "t": round(stamp + i * 0.013, 3), "cpu": full["cpu"]["user"]}
        elif size <= 256:
            value = {k: full[k] for k in ("type", "sent_at", "host", "cpu")}
        elif size <= 1024:
            value = full
        else:
            value = {"hosts": [full] + [json_event(rng, stamp + i) for _ in range(3)]}
        out.append(Event(json.dumps(value)).encode())
    return out


def stream_ratio(compression: Compression | None, events: list[bytes]) -> dict[str, float]:
    """Bytes on the wire (chunk framing included) and CPU per event for one stream."""
    plain = sum(len(chunk(frame)) for frame in events)
    if compression is None:
        return {"wire_bytes": plain / len(events), "ratio": 1.0, "cpu_us": 0.0}
    compressor = compression.new()
    start = time.process_time()
    out = [compressor.flush(frame) for frame in events]
    cpu = time.process_time() - start
    wire = sum(len(chunk(data)) for data in out)
    decode = decoder(compression.encoding)
    assert b"".join(decode(data) for data in out) == b"".join(events)
    return {
        "wire_bytes": wire / len(events),
        "ratio": plain / wire,
        "cpu_us": cpu / len(events) * 1e6,
    }


def _state_child(spec: str, count: int) -> None:
    """In a fresh process: RSS growth per compressor, each warmed with a few events."""
    encoding, level, window, mem_level = spec.split(":")
    compression = Compression(encoding, int(level), int(window), int(mem_level)).checked()
    warm = frames("json", 8)

    def rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    held = []
    for _ in range(count):
        compressor = compression.new()
        for frame in warm:
            compressor.flush(frame)
        held.append(compressor)
    print(json.dumps({"bytes": (rss() - before) / count}))


def state_bytes(compression: Compression, count: int) -> float:
    spec = (
        f"{compression.encoding}:{compression.level}:{compression.window}:{compression.mem_level}"
    )
    out = subprocess.run(
        [sys.executable, __file__, "--state-child", spec, str(count)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return float(json.loads(out.stdout)["bytes"])


GZIP_SETTINGS = [(15, 8), (14, 7), (13, 6), (12, 5), (12, 4), (12, 3), (11, 4), (10, 3), (9, 2)]
BR_SETTINGS = [(5, 22), (5, 16), (5, 14), (5, 12), (4, 16), (3, 16), (2, 16), (1, 16)]


def settings(quick: bool) -> list[dict[str, Any]]:
    count = 200 if quick else 500
    payloads = {kind: frames(kind, count) for kind in ("json", "html")}
    rows = []
    candidates = [Compression("gzip", 6, w, m) for w, m in GZIP_SETTINGS] + [
        Compression("br", q, w) for q, w in BR_SETTINGS
    ]
    for compression in candidates:
        row: dict[str, Any] = {
            "encoding": compression.encoding,
            "level": compression.level,
            "window": compression.window,
            "mem_level": compression.mem_level if compression.encoding == "gzip" else None,
            "default": compression == Compression.default(compression.encoding),
        }
        for kind, events in payloads.items():
            row[kind] = stream_ratio(compression, events)
        row["state_bytes_1000"] = state_bytes(compression, 1000)
        # 10,000 only where it fits comfortably on a shared machine.
        if row["state_bytes_1000"] * 10_000 < 4 << 30 and not quick:
            row["state_bytes_10000"] = state_bytes(compression, 10_000)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


def sizes(quick: bool) -> list[dict[str, Any]]:
    count = 200 if quick else 1000
    rows = []
    for size in (64, 256, 1024, 4096):
        events = frames(f"json{size}", count)
        row: dict[str, Any] = {"event_bytes": statistics.mean(len(e) for e in events)}
        for encoding in ("gzip", "br"):
            row[encoding] = stream_ratio(Compression.default(encoding), events)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    return rows


# The wire benchmark: a runner serving bench_app below, a raw-socket client here.

APP_SOURCE = """
import json, random, time
import gevent
from flask import Flask, request
from flask_sse_stream import SSE, Event
from benchmarks.compression import html_event, json_event

app = Flask(__name__)
app.config.update(SSE_HEARTBEAT_INTERVAL=None, SSE_QUEUE_SIZE=10000,
                  SSE_COMPRESSION=["br", "gzip"])
sse = SSE(app)
app.register_blueprint(sse.blueprint, url_prefix="/events")

@app.get("/health")
def health():
    return "ok"

@app.get("/cpu")
def cpu():
    return {"cpu": time.process_time()}

@app.post("/run")
def run():
    kind, count, rate = request.args["kind"], int(request.args["n"]), float(request.args["rate"])
    channel = request.args["channel"]
    rng = random.Random(15)

    def publish():
        with app.app_context():
            start = time.monotonic()
            for i in range(count):
                gevent.sleep(max(0.0, start + i / rate - time.monotonic()))
                if kind == "json":
                    sse.publish(json_event(rng), channel=channel)
                else:
                    sse.publish(html_event(rng), channel=channel,
                                event="datastar-patch-elements")

    gevent.spawn(publish)
    return "started"
"""


def _get(port: int, method: str, path: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        data = b""
        while part := sock.recv(65536):
            data += part
    return data.split(b"\r\n\r\n", 1)[1]


def _sent_at(kind: bytes, data: bytes) -> float:
    if data.startswith(b"{"):
        return float(json.loads(data)["sent_at"])
    cut = data.index(b'data-sent-at="') + 14
    return float(data[cut : data.index(b'"', cut)])


def wire_run(port: int, kind: str, encoding: str, subscribers: int, count: int) -> dict[str, Any]:
    channel = f"{kind}-{encoding}-{time.monotonic_ns()}"
    selector = selectors.DefaultSelector()
    conns = []
    for _ in range(subscribers):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(
            f"GET /events?channel={channel} HTTP/1.1\r\nHost: x\r\n"
            f"Accept: text/event-stream\r\nAccept-Encoding: {encoding}\r\n\r\n".encode()
        )
        sock.setblocking(False)
        conn = {"head": b"", "wire": 0, "chunked": None, "decode": None, "sse": SSEDecoder()}
        conns.append(conn)
        selector.register(sock, selectors.EVENT_READ, conn)
    latencies: list[float] = []
    received = 0
    total = subscribers * count

    def pump(timeout: float) -> None:
        nonlocal received
        for key, _ in selector.select(timeout):
            conn = key.data
            data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
            now = time.time()
            conn["wire"] += len(data)
            if conn["chunked"] is None:
                conn["head"] += data
                if b"\r\n\r\n" not in conn["head"]:
                    continue
                head, data = conn["head"].split(b"\r\n\r\n", 1)
                coding = None
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-encoding:"):
                        coding = line.split(b":", 1)[1].strip().decode()
                assert coding == (None if encoding == "identity" else encoding), head
                conn["chunked"] = ChunkedDecoder()
                conn["decode"] = decoder(coding)
                conn["wire"] -= len(head) + 4
            for event_type, payload in conn["sse"].feed(conn["decode"](conn["chunked"].feed(data))):
                latencies.append(now - _sent_at(event_type, payload))
                received += 1

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(c["chunked"] for c in conns):
        pump(0.1)
    cpu_before = json.loads(_get(port, "GET", "/cpu"))["cpu"]
    wire_before = sum(c["wire"] for c in conns)
    _get(port, "POST", f"/run?kind={kind}&n={count}&rate=20&channel={channel}")
    deadline = time.monotonic() + count / 20 + 30
    while received < total and time.monotonic() < deadline:
        pump(0.5)
    cpu = json.loads(_get(port, "GET", "/cpu"))["cpu"] - cpu_before
    wire = sum(c["wire"] for c in conns) - wire_before
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    return {
        "delivered": received,
        "expected": total,
        "wire_bytes_per_event": wire / max(1, received),
        "server_cpu_us_per_delivered": cpu / max(1, received) * 1e6,
        "latency_ms": {
            "p50": percentile(latencies, 50) * 1000,
            "p99": percentile(latencies, 99) * 1000,
            "max": max(latencies) * 1000 if latencies else 0.0,
        },
    }


def wire(quick: bool) -> list[dict[str, Any]]:
    subscribers, count = (50, 60) if quick else (100, 200)
    app_dir = ROOT / "build" / "bench-compression"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "bench_app.py").write_text(APP_SOURCE)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=f"{app_dir}:{ROOT}")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flask_sse_stream",
            "serve",
            "bench_app:app",
            "--port",
            str(port),
            "--no-access-log",
        ],
        env=env,
    )
    rows = []
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _get(port, "GET", "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        for kind in ("json", "html"):
            for encoding in ("identity", "gzip", "br"):
                row = {"kind": kind, "encoding": encoding, "subscribers": subscribers}
                row.update(wire_run(port, kind, encoding, subscribers, count))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        server.terminate()
        server.wait(20)
    return rows


def chart(result: dict[str, Any], path: Path) -> None:
    """A small SVG: per payload, bytes per event and CPU per delivered event, each coding."""
    rows = result["wire"]
    panels = (
        ("wire_bytes_per_event", "bytes on the wire per event"),
        ("server_cpu_us_per_delivered", "server CPU per delivered event (us)"),
        ("p99", "arrival latency p99 (ms)"),
    )
    colours = {"identity": "#999999", "gzip": "#3b7dd8", "br": "#d8833b"}
    width, panel_h, bar_h = 640, 150, 16
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{panel_h * len(panels) + 20}" font-family="sans-serif" font-size="11">'
    ]
    for p, (key, title) in enumerate(panels):
        top = p * panel_h + 16
        parts.append(f'<text x="4" y="{top}" font-weight="bold">{title}</text>')

        def value(row: dict[str, Any], key: str = key) -> float:
            return float(row["latency_ms"][key] if key == "p99" else row[key])

        scale = (width - 260) / max(value(r) for r in rows)
        for i, row in enumerate(rows):
            y = top + 8 + i * (bar_h + 3)
            w = max(1.0, value(row) * scale)
            label = f"{row['kind']} {row['encoding']}"
            parts.append(f'<text x="4" y="{y + 12}">{label}</text>')
            parts.append(
                f'<rect x="110" y="{y}" width="{w:.1f}" height="{bar_h}" '
                f'fill="{colours[row["encoding"]]}"/>'
            )
            parts.append(f'<text x="{114 + w:.1f}" y="{y + 12}">{value(row):,.1f}</text>')
    parts.append("</svg>\n")
    path.write_text("\n".join(parts))


def report(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks.md's compression section, in Markdown."""
    out = [
        "| coding | level | window | memLevel | JSON ratio | HTML ratio | "
        "JSON CPU/event (us) | state/stream, 1,000 (KiB) | state/stream, 10,000 (KiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["settings"]:
        ten = row.get("state_bytes_10000")
        out.append(
            f"| {row['encoding']}{' (default)' if row['default'] else ''} | {row['level']} | "
            f"{row['window']} | {row['mem_level'] or '-'} | {row['json']['ratio']:.2f} | "
            f"{row['html']['ratio']:.2f} | {row['json']['cpu_us']:.1f} | "
            f"{row['state_bytes_1000'] / 1024:.1f} | "
            f"{'-' if ten is None else f'{ten / 1024:.1f}'} |"
        )
    out += [
        "",
        "| event size (bytes) | gzip ratio | gzip CPU/event (us) | br ratio | br CPU/event (us) |",
        "|---|---|---|---|---|",
    ]
    for row in result["sizes"]:
        out.append(
            f"| {row['event_bytes']:.0f} | {row['gzip']['ratio']:.2f} | "
            f"{row['gzip']['cpu_us']:.1f} | {row['br']['ratio']:.2f} | {row['br']['cpu_us']:.1f} |"
        )
    out += [
        "",
        "| stream | coding | delivered | bytes on the wire per event | "
        "server CPU per delivered event (us) | latency p50 / p99 / max (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["wire"]:
        lat = row["latency_ms"]
        out.append(
            f"| {row['kind']} | {row['encoding']} | {row['delivered']}/{row['expected']} | "
            f"{row['wire_bytes_per_event']:.0f} | {row['server_cpu_us_per_delivered']:.1f} | "
            f"{lat['p50']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("settings", "sizes", "wire"))
    parser.add_argument("--report", action="store_true", help="print the tables of the results")
    parser.add_argument("--state-child", nargs=2, metavar=("SPEC", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.state_child:
        _state_child(args.state_child[0], int(args.state_child[1]))
        return
    result: dict[str, Any] = {}
    if RESULTS.exists():
        result = json.loads(RESULTS.read_text())
    if args.report:
        print(report(result))
        return
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    ).stdout.strip()
    result.update(
        {
            "commit": commit,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "quick": args.quick,
            "zlib": zlib.ZLIB_RUNTIME_VERSION,
        }
    )
    for part, run in (("settings", settings), ("sizes", sizes), ("wire", wire)):
        if args.only in (None, part):
            result[part] = run(args.quick)
            # Parts may be run again alone: each keeps where and when it ran.
            result[f"{part}_run"] = {key: result[key] for key in ("commit", "when", "quick")}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if "wire" in result:
        chart(result, CHART)
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
