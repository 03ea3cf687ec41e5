"""The Prometheus rendering of the stats."""

from __future__ import annotations

from flask_sse_stream._metrics import prometheus_text


def test_stats_render_as_prometheus_text() -> None:
    text = prometheus_text(
        {
            "open_streams": 3,
            "subscribers": {"news": 1, "chat": 2},
            "published": 10,
            "delivered": 25,
            "dropped_slow": 1,
            "conflated": 5,
            "dropped": 6,
            "gaps": 2,
            "closed": {"disconnect": 4, "finished": 0},
            "heartbeats": {"direct": 7, "handler": 1},
        }
    )
    lines = text.splitlines()
    assert "# TYPE sse_open_streams gauge" in lines
    assert "sse_open_streams 3" in lines
    assert lines.index('sse_subscribers{channel="chat"} 2') < lines.index(
        'sse_subscribers{channel="news"} 1'
    )
    assert "# TYPE sse_events_published_total counter" in lines
    assert "sse_events_delivered_total 25" in lines
    assert "sse_subscribers_dropped_total 1" in lines
    assert "# TYPE sse_events_conflated_total counter" in lines
    assert "sse_events_conflated_total 5" in lines
    assert "sse_events_dropped_total 6" in lines
    assert "sse_gaps_total 2" in lines
    assert 'sse_streams_closed_total{reason="disconnect"} 4' in lines
    assert 'sse_heartbeats_total{way="direct"} 7' in lines
    assert text.endswith("\n")


def test_label_values_are_escaped() -> None:
    text = prometheus_text({"subscribers": {'a"b\\c\nd': 1}})
    assert 'sse_subscribers{channel="a\\"b\\\\c\\nd"} 1' in text.splitlines()


def test_missing_keys_are_left_out() -> None:
    assert prometheus_text({"published": 1}).count("# TYPE") == 1
