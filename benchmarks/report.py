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

# The figures of the headline table: (scenario id, metric key).
HEADLINES = (
    ("S1", "kib_1000"),
    ("S1", "kib_10000"),
    ("S1", "reached"),
    ("S1", "cpu_pct"),
    ("S2", "delivered_per_s"),
    ("S2", "lat_p50"),
    ("S2", "lat_p99"),
    ("S3", "events_per_s"),
    ("S4", "p50"),
    ("S4", "p99"),
    ("S5", "first_byte_p50"),
    ("S5", "first_byte_p99"),
    ("HB-1000", "per_stream"),
    ("HB-10000", "pct_15s"),
)

SHORT = {
    "ours": "runner",
    "ours-worker": "our worker",
    "ours-gunicorn": "-k gevent",
    "ours-redis": "runner+Redis",
    "ours-worker-redis": "our worker+Redis",
    "ours-gunicorn-redis": "-k gevent+Redis",
    "ours-worker-channels": "our worker, channels",
    "ours-gunicorn-channels": "-k gevent, channels",
    "shared": "shared loop",
}

# How ours were served, for the reader of the tables: the same app three
# ways. (servers, short name, what it is); listed where one of the servers ran.
LEGEND = (
    (
        ("ours", "ours-redis"),
        "runner",
        "our runner, `python -m flask_sse_stream serve` (writes beside the server)",
    ),
    (
        ("ours-worker", "ours-worker-redis", "ours-worker-channels"),
        "our worker",
        "gunicorn with the worker class the library ships, "
        "`gunicorn -k flask_sse_stream.gunicorn.GeventWorker` (writes beside the server)",
    ),
    (
        ("ours-gunicorn", "ours-gunicorn-redis", "ours-gunicorn-channels"),
        "-k gevent",
        "plain `gunicorn -k gevent`; from c22aec4 on the plain path (a producer "
        "greenlet, every byte through the server), before it writes beside the server "
        "as under the runner",
    ),
)


# Issue 6's targets: (label, scenario, metric, kind, bound); kind "ratio" is
# ours / best peer (or the named peer), "abs" the figure itself; for a
# lower-is-better metric the target is figure <= bound, else >= bound.
TARGETS: tuple[tuple[str, str, str, str, float, str | None], ...] = (
    (
        "memory per idle stream at 1,000 <= the naive view's",
        "S1",
        "kib_1000",
        "ratio",
        1.0,
        "naive",
    ),
    (
        "memory per idle stream at 10,000 <= the naive view's",
        "S1",
        "kib_10000",
        "ratio",
        1.0,
        "naive",
    ),
    (
        "memory per idle stream at 1,000 <= 0.5 x sse-starlette",
        "S1",
        "kib_1000",
        "ratio",
        0.5,
        "starlette",
    ),
    ("10,000 streams in one worker", "S1", "reached", "abs", 10000, None),
    (
        "idle CPU at 10,000 streams, 15 s heartbeat < 2 % of a core",
        "S1",
        "cpu_pct",
        "abs",
        2.0,
        None,
    ),
    ("fan-out delivered/s >= 1.5 x the best peer", "S2", "delivered_per_s", "ratio", 1.5, None),
    ("fan-out p99 at 10 events/s <= 0.5 x the best peer", "S2", "lat_p99", "ratio", 0.5, None),
    ("single stream events/s >= 1.5 x the best peer", "S3", "events_per_s", "ratio", 1.5, None),
    ("disconnect cleanup p99 < 100 ms", "S4", "p99", "abs", 100.0, None),
    ("first byte p99 < 50 ms", "S5", "first_byte_p99", "abs", 50.0, None),
    (
        "stretch: >= 100k delivered events/s to 1,000 subscribers",
        "S2",
        "delivered_per_s",
        "abs",
        100000,
        None,
    ),
    ("stretch: >= 150k events/s on one stream", "S3", "events_per_s", "abs", 150000, None),
    ("stretch: <= 16 KiB per idle stream (at 10,000)", "S1", "kib_10000", "abs", 16.0, None),
    ("stretch: disconnect cleanup p99 <= 5 ms", "S4", "p99", "abs", 5.0, None),
)


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
    failed = {name: whys for name, whys in scenario.get("failures", {}).items() if whys}
    if failed:
        lines += ["", "Failed:", ""]
        lines += [f"- `{name}`: {'; '.join(whys)}" for name, whys in failed.items()]
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
        row = next((r for r in scenario["rows"] if r["metric"] == key), None)
        if row is None:
            continue
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


def _row(data: dict[str, Any], scenario_id: str, key: str) -> dict[str, Any] | None:
    for scenario in data["scenarios"]:
        if scenario["id"] == scenario_id:
            return next((r for r in scenario["rows"] if r["metric"] == key), None)
    return None


def targets_table(data: dict[str, Any]) -> list[str]:
    """Issue 6's targets: met or missed, by how much, for each of our servers."""
    lines = [
        "| target | ours | figure | met? |",
        "|---|---|---|---|",
    ]
    for label, scenario_id, key, kind, bound, versus in TARGETS:
        row = _row(data, scenario_id, key)
        if row is None:
            continue
        figures = row["servers"]
        lower = row["lower_is_better"]
        for name in row["ours"]:
            median = figures[name]["median"]
            if kind == "abs":
                value, shown = median, f"{number(median)}{_unit_suffix(row)}"
            else:
                peer = versus or row["best_peer"]
                if peer is None or peer not in figures or not figures[peer]["median"]:
                    continue
                value = median / figures[peer]["median"]
                shown = (
                    f"{ratio(value)} {peer} ({number(median)} vs {number(figures[peer]['median'])})"
                )
            met = value <= bound if lower else value >= bound
            by = value / bound if bound else float("nan")
            verdict = "met" if met else f"**missed** ({ratio(by)} of the bound)"
            lines.append(f"| {label} | {SHORT.get(name, name)} | {shown} | {verdict} |")
    lines.append("")
    return lines


def _unit_suffix(row: dict[str, Any]) -> str:
    return f" {row['unit']}" if row["unit"] else ""


def legend(data: dict[str, Any]) -> list[str]:
    """Which of ours is which, for the servers that ran."""
    ran = {name for scenario in data["scenarios"] for name in scenario["servers"]}
    lines = [
        f"- {short} (`{'`, `'.join(n for n in names if n in ran)}`): {text}"
        for names, short, text in LEGEND
        if ran.intersection(names)
    ]
    if not lines:
        return []
    return [
        "Ours, served in these ways (short names in the headline and targets tables):",
        "",
        *lines,
        "",
    ]


def results_markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    peers = ", ".join(f"{k} {v}" for k, v in meta.get("peer_versions", {}).items())
    skipped = "; ".join(f"`{k}`: {v}" for k, v in meta.get("skipped", {}).items())
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
        f"Python {meta['python']}, {versions}; gevent loop {meta['gevent_loop']}."
        + (f" Benchmark environment (the peers): {peers}." if peers else ""),
        "",
        *([f"Skipped: {skipped}.", ""] if skipped else []),
        *legend(data),
        "#### Headline figures",
        "",
        *headline_table(data),
        "#### Issue 6's targets",
        "",
        *targets_table(data),
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
