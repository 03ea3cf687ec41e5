"""The chart of docs/benchmarks.md: ours against the peers, one panel per figure.

Runs in the benchmark environment, which has matplotlib (``core.py`` calls
it; by hand: ``benchmarks/.venv/bin/python benchmarks/chart.py
benchmarks/results/core.json docs/benchmarks.png``). Each panel shows the
median of each server as a bar, the min-max of the repetitions as a
whisker, and ours / best peer in the bar's label.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

# (scenario id, metric key, title, log scale)
PANELS = (
    ("S1", "kib_10000", "RSS per idle stream, 10,000 streams (KiB)", False),
    ("S1", "cpu_pct", "idle CPU, 10,000 streams (% of a core)", False),
    ("S2", "delivered_per_s", "fan-out to 1,000: delivered events/s", False),
    ("S2", "lat_p99", "fan-out at 10 events/s: p99 latency (ms)", True),
    ("S3", "events_per_s", "one stream: events/s", False),
    ("S4", "p99", "disconnect to cleanup, p99 (ms)", True),
    ("S5", "first_byte_p99", "first byte, producer blocked 10 s, p99 (ms)", True),
    ("S1", "kib_1000", "RSS per idle stream, 1,000 streams (KiB)", False),
)
LABELS = {
    "ours": "ours (runner)",
    "ours-worker": "ours (gunicorn, our worker)",
    "ours-gunicorn": "ours (gunicorn -k gevent)",
    "ours-redis": "ours + Redis (runner)",
    "ours-worker-redis": "ours + Redis (our worker)",
    "ours-gunicorn-redis": "ours + Redis (-k gevent)",
    "ours-worker-channels": "ours, channels (our worker)",
    "ours-gunicorn-channels": "ours, channels (-k gevent)",
    "naive": "naive Flask view",
    "starlette": "sse-starlette",
    "fastapi": "FastAPI (fastapi.sse)",
    "flask-sse": "flask-sse + Redis",
}
OURS_COLOUR = "#1f6fb4"
PEER_COLOUR = "#b0b0b0"
BEST_COLOUR = "#707070"


def _row(data: dict[str, Any], scenario_id: str, key: str) -> dict[str, Any] | None:
    for scenario in data["scenarios"]:
        if scenario["id"] == scenario_id:
            for row in scenario["rows"]:
                if row["metric"] == key:
                    return row
    return None


def _fmt(value: float) -> str:
    if value >= 10000:
        return f"{value / 1000:,.0f}k"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def draw(data: dict[str, Any], out: Path) -> None:
    panels = [(p, _row(data, p[0], p[1])) for p in PANELS]
    panels = [(p, row) for p, row in panels if row is not None and row["servers"]]
    columns = 2
    rows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(13, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, ((_, _, title, log), row) in zip(axes.flat, panels, strict=False):
        names = [n for n in row["ours"]] + [n for n in row["servers"] if n not in row["ours"]]
        figures = [row["servers"][n] for n in names]
        medians = [f["median"] for f in figures]
        low = [max(f["median"] - f["min"], 0) for f in figures]
        high = [max(f["max"] - f["median"], 0) for f in figures]
        colours = [
            OURS_COLOUR
            if n in row["ours"]
            else BEST_COLOUR
            if n == row["best_peer"]
            else PEER_COLOUR
            for n in names
        ]
        y = range(len(names))
        ax.barh(y, medians, xerr=[low, high], color=colours, capsize=3, error_kw={"lw": 0.8})
        ax.set_yticks(list(y), [LABELS.get(n, n) for n in names], fontsize=8)
        ax.invert_yaxis()
        better = "lower is better" if row["lower_is_better"] else "higher is better"
        ax.set_title(f"{title}  ({better})", fontsize=9, loc="left")
        if log and min(medians) > 0:
            ax.set_xscale("log")
        ax.tick_params(axis="x", labelsize=7)
        for i, (name, figure) in enumerate(zip(names, figures, strict=True)):
            text = _fmt(figure["median"])
            share = figure.get("ratio")
            if name in row["ours"] and share and row["best_peer"]:
                shown = f"1/{1 / share:,.0f}" if share < 0.1 else f"{share:.2g}x"
                text += f"  ({shown} best peer)"
            # Right of the whisker, so the two never overlap.
            ax.text(max(figure["max"], figure["median"]), i, "  " + text, va="center", fontsize=7)
        right = max(f["max"] for f in figures)
        if log and min(medians) > 0:
            ax.set_xlim(min(medians) / 2, right * 30)
        else:
            ax.set_xlim(0, right * 1.45)
    meta = data["meta"]
    fig.suptitle(
        f"flask-sse-stream against its peers, {meta['date'][:10]}, commit {meta['commit']}: "
        f"median of {meta.get('reps', 3)} runs, whiskers min-max; "
        "blue = ours, dark grey = best peer",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    draw(data, Path(sys.argv[2]))


if __name__ == "__main__":
    main()
