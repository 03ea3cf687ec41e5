"""Two full runs of ``core.py`` side by side: each figure's ratio to the best peer, and its change.

Run from the repository root, after two full runs back to back::

    .venv/bin/python benchmarks/core.py --ref e5f99f9 --out benchmarks/results/core-e5f99f9.json
    .venv/bin/python benchmarks/core.py --ref HEAD
    .venv/bin/python benchmarks/compare.py benchmarks/results/core-e5f99f9.json \\
        benchmarks/results/core.json

Prints a Markdown table: for each headline figure, ours before and after
(the runner; our shipped worker after against plain ``-k gevent`` before,
which wrote beside the server before the stream-core rework; plain
``-k gevent`` after), each with its ratio to the best peer of its own run,
and the change of that ratio. A change for the worse over ``--limit``
percent is marked.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

FIGURES = (
    ("S1", "RSS per idle stream at 1,000"),
    ("S1", "RSS per idle stream at 10,000"),
    ("S1", "idle CPU at 10,000 over 20 s"),
    ("S1", "time to open 10,000 streams"),
    ("S2", "delivered events/s at saturation"),
    ("S2", "latency at 10 events/s, p50"),
    ("S2", "latency at 10 events/s, p99"),
    ("S2", "server CPU at 10 events/s"),
    ("S3", "events/s on one stream"),
    ("S4", "close to finally, p50"),
    ("S4", "close to finally, p99"),
    ("S5", "first body byte, p50"),
    ("S5", "first body byte, p99"),
)
# (column title, server in the earlier run, server in the later run)
PAIRS = (
    ("runner", "ours", "ours"),
    ("our worker (before: `-k gevent`)", "ours-gunicorn", "ours-worker"),
)
CHANNELS = ("ours-gunicorn-channels", "ours-worker-channels")


Row = dict[str, Any]


def rows_of(path: Path) -> dict[tuple[str, str], Row]:
    data = json.loads(path.read_text())
    return {
        (scenario["id"].split("-")[0], row["label"]): row
        for scenario in data["scenarios"]
        for row in scenario["rows"]
    }


def find(rows: dict[tuple[str, str], Row], scenario: str, label: str) -> Row | None:
    for (sid, row_label), row in rows.items():
        if sid == scenario and row_label.startswith(label):
            return row
    return None


def cell(row: Row | None, server: str) -> tuple[float | None, str]:
    figures = (row or {}).get("servers", {}).get(server)
    if not figures or figures.get("median") is None:
        return None, ""
    median, ratio = figures["median"], figures.get("ratio")
    shown = f"{median:.3g}" if median < 1e4 else f"{median:,.0f}"
    if ratio is None:
        return None, shown
    return ratio, f"{shown} ({ratio:.3g}x {row.get('best_peer') or ''})".replace(" )", ")")


def change(before: float | None, after: float | None, lower_is_better: bool, limit: float) -> str:
    if before is None or after is None:
        return ""
    factor = after / before
    worse = factor > 1 if lower_is_better else factor < 1
    percent = abs(factor - 1) * 100
    text = f"{percent:.0f} % {'worse' if worse else 'better'}"
    return text + (f" **(over {limit:g} %)**" if worse and percent > limit else "")


def table(before: Path, after: Path, limit: float) -> str:
    earlier, later = rows_of(before), rows_of(after)
    head = ["figure"]
    for title, _, _ in PAIRS:
        head += [f"{title}, before", f"{title}, after", "change"]
    head.append("plain `-k gevent`, after")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario, label in FIGURES:
        row_a, row_b = find(earlier, scenario, label), find(later, scenario, label)
        if row_a is None or row_b is None:
            continue
        lower = row_b.get("lower_is_better", True)
        cells = [f"{scenario} {row_b['label']} ({row_b.get('unit', '')})"]
        for _, server_a, server_b in PAIRS:
            ratio_a, shown_a = cell(row_a, server_a)
            ratio_b, shown_b = cell(row_b, server_b)
            cells += [shown_a, shown_b, change(ratio_a, ratio_b, lower, limit)]
        cells.append(cell(row_b, "ours-gunicorn")[1])
        lines.append("| " + " | ".join(cells) + " |")
        if scenario == "S1" and label.startswith(("RSS", "idle CPU")):
            ratio_a, shown_a = cell(row_a, CHANNELS[0])
            ratio_b, shown_b = cell(row_b, CHANNELS[1])
            if shown_a and shown_b:
                cells = [f"{scenario} {row_b['label']}, channels blueprint", "", "", ""]
                cells += [shown_a, shown_b, change(ratio_a, ratio_b, lower, limit)]
                cells.append(cell(row_b, CHANNELS[0])[1])
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="the earlier run's JSON")
    parser.add_argument("after", type=Path, help="the later run's JSON")
    parser.add_argument("--limit", type=float, default=10.0, help="percent worse to mark")
    args = parser.parse_args()
    print(table(args.before, args.after, args.limit))


if __name__ == "__main__":
    main()
