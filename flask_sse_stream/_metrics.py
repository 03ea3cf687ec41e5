"""Rendering :meth:`SSE.stats` in the Prometheus text exposition format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["prometheus_text"]

# (stats key, metric name, type, help, label name for a mapping value)
_METRICS = (
    ("open_streams", "sse_open_streams", "gauge", "Event streams open in this process.", None),
    ("subscribers", "sse_subscribers", "gauge", "Subscribers per channel.", "channel"),
    ("published", "sse_events_published_total", "counter", "Events published.", None),
    (
        "delivered",
        "sse_events_delivered_total",
        "counter",
        "Events handed to subscribers.",
        None,
    ),
    (
        "replayed",
        "sse_events_replayed_total",
        "counter",
        "Events replayed to reconnecting clients.",
        None,
    ),
    (
        "resets",
        "sse_resets_total",
        "counter",
        "Reset events sent because a last event id could not be replayed from.",
        None,
    ),
    ("queued", "sse_events_queued", "gauge", "Events waiting for subscribers.", None),
    ("history", "sse_events_in_history", "gauge", "Events kept for replay.", None),
    (
        "dropped_slow",
        "sse_subscribers_dropped_total",
        "counter",
        "Subscribers dropped because they fell too far behind.",
        None,
    ),
    (
        "conflated",
        "sse_events_conflated_total",
        "counter",
        "Events a lagging subscriber skipped for a newer one of the same key.",
        None,
    ),
    (
        "dropped",
        "sse_events_dropped_total",
        "counter",
        "Events a lagging drop-oldest subscriber skipped.",
        None,
    ),
    ("gaps", "sse_gaps_total", "counter", "Gap events sent to drop-oldest subscribers.", None),
    ("closed", "sse_streams_closed_total", "counter", "Streams ended, by reason.", "reason"),
    (
        "heartbeats",
        "sse_heartbeats_total",
        "counter",
        "Heartbeats sent, by the way they were written.",
        "way",
    ),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(stats: Mapping[str, Any]) -> str:
    """Return ``stats`` as Prometheus text; unknown keys are left out."""
    lines: list[str] = []
    for key, name, kind, help_text, label in _METRICS:
        if key not in stats:
            continue
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        value = stats[key]
        if label is None:
            lines.append(f"{name} {value}")
        else:
            lines.extend(
                f'{name}{{{label}="{_label(str(k))}"}} {v}' for k, v in sorted(value.items())
            )
    return "\n".join(lines) + "\n"
