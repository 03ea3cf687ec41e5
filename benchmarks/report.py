"""Markdown tables from the benchmark JSON, written into ``docs/benchmarks.md``.

Only the text between the two result markers is replaced, so the prose
around it is kept from run to run.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

START = "<!-- results:start (written by benchmarks/core.py; edits here are lost) -->"
END = "<!-- results:end -->"

# The figures issue 2's closing note quotes: (scenario id, metric key); "S1"
# stands for the first S1 size that ran.
HEADLINES = (
    ("S5", "first_byte_p50"),
    ("S5", "first_byte_p99"),
    ("S4", "p50"),
    ("S4", "p99"),
    ("S1", "kib_per_stream"),
    ("S1", "cpu_pct"),
    ("HB-1000", "per_stream"),
    ("HB-10000", "per_stream"),
    ("HB-10000", "pct_15s"),
    ("HB-1000", "hot"),
)

SHORT = {"ours": "runner", "ours-gunicorn": "gunicorn", "shared": "shared loop"}


def number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    size = abs(value)
    if size >= 100 or value == int(value):
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 0.1:
        return f"{value:.2f}"
    return f"{value:.2g}"


def ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0x"
    if value < 0.01:
        return f"1/{1 / value:,.0f}"
    if value < 10:
        return f"{value:.2f}x"
    return f"{value:,.0f}x"


def spread(figure: dict[str, Any]) -> str:
    return f"{number(figure['min'])}-{number(figure['max'])}"


def _unit(row: dict[str, Any]) -> str:
    return f" ({row['unit']})" if row["unit"] else ""


def scenario_table(scenario: dict[str, Any]) -> list[str]:
    lines = [
        f"### {scenario['id']}: {scenario['title']}",
        "",
        scenario["what"],
        "",
        "| figure | server | median | min-max | vs best peer |",
        "|---|---|---:|---:|---:|",
    ]
    for row in scenario["rows"]:
        best = row["best_peer"]
        for name, figure in row["servers"].items():
            versus = ratio(figure["ratio"]) + (f" {best}" if best and name != best else "")
            if name == best:
                versus = "peer"
            lines.append(
                f"| {row['label']}{_unit(row)} | {name} | {number(figure['median'])} "
                f"| {spread(figure)} | {versus} |"
            )
    lines += ["", "Servers:", ""]
    lines += [f"- `{name}`: `{command}`" for name, command in scenario["servers"].items()]
    lines.append("")
    return lines


def headline_table(data: dict[str, Any]) -> list[str]:
    by_id: dict[str, dict[str, Any]] = {}
    for scenario in data["scenarios"]:
        by_id.setdefault(scenario["id"], scenario)
        by_id.setdefault(scenario["id"].split("-")[0], scenario)
    lines = [
        "| figure | ours: median (min-max) | best peer: median | ours / peer |",
        "|---|---|---|---|",
    ]
    for scenario_id, key in HEADLINES:
        scenario = by_id.get(scenario_id)
        if scenario is None:
            continue
        row = next(r for r in scenario["rows"] if r["metric"] == key)
        figures = row["servers"]
        ours = "; ".join(
            f"{SHORT.get(n, n)} {number(figures[n]['median'])} ({spread(figures[n])})"
            for n in row["ours"]
        )
        best = row["best_peer"]
        peer = f"{best} {number(figures[best]['median'])}" if best else "-"
        ratios = "; ".join(f"{ratio(figures[n]['ratio'])}" for n in row["ours"])
        lines.append(f"| {scenario_id} {row['label']}{_unit(row)} | {ours} | {peer} | {ratios} |")
    lines.append("")
    return lines


def results_markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    load = " -> ".join(
        "/".join(f"{x:.2f}" for x in meta[k]) for k in ("loadavg_at_start", "loadavg_at_end")
    )
    lines = [
        f"Measured {meta['date']} ({meta['mode']} run, {meta['runtime_s']} s) with "
        f"`{meta['command']}` at commit {meta['commit']}"
        + (
            f" plus uncommitted library changes ({', '.join(meta['library_changes'])})."
            if meta.get("library_changes")
            else "."
        ),
        "",
        f"Machine: {meta['nproc']} x {meta['cpu_model']} ({meta['usable_cpus']} usable), "
        f"{meta['memory_gib']} GiB, Linux {meta['kernel']}; load average {load}. "
        f"Python {meta['python']}, {versions}; gevent loop {meta['gevent_loop']}.",
        "",
        "#### Headline figures",
        "",
        *headline_table(data),
    ]
    for scenario in data["scenarios"]:
        lines += scenario_table(scenario)
    return "\n".join(lines)


def write_doc(path: Path, data: dict[str, Any]) -> None:
    """Put the results between the markers of ``path``, creating it if needed."""
    block = f"{START}\n\n{results_markdown(data)}\n{END}"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    head, found, rest = text.partition(START)
    if not found:
        text = f"{text.rstrip()}\n\n{block}\n"
    else:
        tail = rest.partition(END)[2]
        text = f"{head}{block}{tail}"
    path.write_text(text)
