"""The worker-scaling scenario: fan-out on 1 and 2 worker processes (issue 18).

Run from the repository root (``make bench-workers``)::

    .venv/bin/python benchmarks/workers.py --reps 3

S2's fan-out (1,000 subscribers of one channel; a steady 10 events/s for
the latency, then saturation: delivered events/s), on:

* ``ours-w1``, ``ours-w2``: gunicorn with the shipped config (``-c
  python:flask_sse_stream.gunicorn_conf``, our GeventWorker) and 1 or 2
  workers, the Redis broker between them: a publish, taken by either
  worker, reaches the subscribers of both;
* ``starlette-w1``, ``fastapi-w1``: the peers on one uvicorn process.
  With ``uvicorn --workers 2`` each worker has its own in-process queues and
  no broker: a publish reaches only the subscribers of the worker that took
  it (``--reach`` measures that share), so their broadcast is one worker's.

The subscribers are spread over the workers by the kernel (one listening
socket shared by the workers); the client waits for every subscriber's
first event (``Last-Event-ID`` reset event, or the peer's probe), since
no one worker counts them all. Server CPU is the sum of all the server's
processes and its redis-server. The machine has 2 cores: with 2 workers,
the client and Redis compete with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import core
import scale
import servers
from servers import Server, ServerSpec

HERE = Path(__file__).resolve().parent
PATHS = {
    "ours": "/events/?channel=bench&lastEventId=probe",
    "starlette": "/idle",
    "fastapi": "/idle",
}
CONFIGS = ("ours-w1", "ours-w2", "starlette-w1", "fastapi-w1")


def _spec(config: str) -> tuple[str, ServerSpec]:
    name, workers = config.rsplit("-w", 1)
    return name, scale.spec(name, int(workers), 5000)


def _pids(server: Server) -> list[int]:
    pids = scale.tree(server.process.pid)
    if server.redis is not None:
        pids.append(server.redis.pid)
    return pids


def _fanout_job(server: Server, name: str, **settings: Any) -> dict[str, Any]:
    """core.py's S2 job with ``settings`` (``core.Settings`` fields), on every worker's pid."""
    job = core._fanout_job(server, dataclasses.replace(core.FULL, **settings))
    # Every worker's CPU counts; subscribers are ready once their first event arrives.
    return {**job, "pids": _pids(server), "path": PATHS[name], "ready": "event"}


def measure(config: str, args: argparse.Namespace) -> dict[str, Any]:
    name, spec = _spec(config)
    workers = int(config.rsplit("-w", 1)[1])
    with Server(spec) as server:
        deadline = time.monotonic() + 30
        while len(scale.tree(server.process.pid)) < workers + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        job = _fanout_job(
            server,
            name,
            s2_subscribers=args.subscribers,
            s2_sat_seconds=args.sat_seconds,
            s2_rate=args.rate,
            s2_lat_seconds=args.lat_seconds,
            s2_drain=3.0,
        )
        result = core.run_client(job, timeout=300)
        if not server.alive():
            raise RuntimeError(f"{config} died:\n{server.log()}")
    result["command"] = spec.command()
    return result


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Medians per config, with ratios to the best peer (higher/lower is better per figure)."""
    figures = {
        "delivered_per_s": (lambda r: r["sat"][0]["delivered_per_s"], False),
        "sat_server_cpu_pct": (lambda r: r["sat"][0]["server_cpu_pct"], True),
        "sat_client_cpu_pct": (lambda r: r["sat"][0]["client_cpu_pct"], True),
        "lat_p50_ms": (lambda r: r["lat"][0]["p50_ms"], True),
        "lat_p99_ms": (lambda r: r["lat"][0]["p99_ms"], True),
        "lat_delivered": (lambda r: r["lat"][0]["delivered"] / r["lat"][0]["expected"], False),
    }
    rows = []
    for key, (get, lower) in figures.items():
        medians = {c: statistics.median(get(r) for r in rs) for c, rs in runs.items() if rs}
        peers = {c: v for c, v in medians.items() if not c.startswith("ours")}
        best = (min if lower else max)(peers, key=lambda c: peers[c]) if peers else None
        rows.append(
            {
                "figure": key,
                "best_peer": best,
                "medians": medians,
                "ratios": {
                    c: (v / medians[best] if best and medians[best] else None)
                    for c, v in medians.items()
                },
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], configs: list[str]) -> str:
    lines = [
        "| figure | " + " | ".join(configs) + " |",
        "|---" * (len(configs) + 1) + "|",
    ]
    for row in rows:
        cells = []
        for config in configs:
            value, ratio = row["medians"].get(config), row["ratios"].get(config)
            if value is None:
                cells.append("")
                continue
            text = f"{value:,.3g}" if value < 1000 else f"{value:,.0f}"
            if ratio is not None:
                text += f" ({ratio:.3g}x)"
            cells.append(text)
        label = f"{row['figure']} (best peer: {row['best_peer']})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reach(args: argparse.Namespace) -> dict[str, Any]:
    """The share of subscribers a publish reaches on a peer with 2 uvicorn workers."""
    out: dict[str, Any] = {}
    for name in ("starlette", "fastapi"):
        spec = scale.spec(name, 2, 5000)
        with Server(spec) as server:
            time.sleep(2)
            job = _fanout_job(
                server,
                name,
                s2_subscribers=args.subscribers,
                s2_sat_seconds=0.1,
                s2_rate=10,
                s2_lat_seconds=1,
                s2_drain=2.0,
            )
            result = core.run_client(job, timeout=120)
        lat = result["lat"][0]
        out[f"{name}-w2"] = {
            "delivered": lat["delivered"],
            "expected": lat["expected"],
            "share": lat["delivered"] / lat["expected"],
            "command": spec.command(),
        }
        core.log(f"reach {name} x2: {lat['delivered']}/{lat['expected']}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--lat-seconds", type=float, default=4.0)
    parser.add_argument("--sat-seconds", type=float, default=2.0)
    parser.add_argument("--reach", action="store_true", help="also: the peers on 2 workers")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "workers.json")
    args = parser.parse_args()
    servers.raise_fd_limit()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for rep in range(args.reps):
        for config in configs:
            result = measure(config, args)
            sat, lat = result["sat"][0], result["lat"][0]
            core.log(
                f"W rep {rep + 1} {config}: {sat['delivered_per_s']:,.0f}/s "
                f"(server {sat['server_cpu_pct']:.0f} %, client {sat['client_cpu_pct']:.0f} %)"
                f"; at {args.rate:g}/s p50 {lat['p50_ms']:.1f} p99 {lat['p99_ms']:.1f} ms, "
                f"{lat['delivered']}/{lat['expected']}"
            )
            runs[config].append(result)
    rows = summary(runs)
    data = {
        "command": " ".join([".venv/bin/python", "benchmarks/workers.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_at_end": list(os.getloadavg()),
        "commands": {c: runs[c][0]["command"] for c in configs if runs[c]},
        "summary": rows,
        "reach": reach(args) if args.reach else None,
        "raw": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    print(markdown(rows, configs))
    if data["reach"]:
        for config, share in data["reach"].items():
            print(f"{config}: a publish reached {share['share']:.0%} of the subscribers")


if __name__ == "__main__":
    main()
