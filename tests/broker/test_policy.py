"""The policy rules and queues of ``_broker/_policy.py`` on their own (no broker)."""

from __future__ import annotations

import json

import pytest

from flask_sse_stream import Event
from flask_sse_stream._broker._policy import (
    Counters,
    Policies,
    gap_event,
    overflow,
    replay,
    take,
)
from flask_sse_stream._broker._wakeup import Subscriber


def test_a_channels_own_name_wins_then_the_first_pattern_then_disconnect() -> None:
    policies = Policies({"tick*": "conflate", "ticker:slow": "drop-oldest", "t*": "drop-oldest"})
    assert policies.of("ticker:slow") == "drop-oldest"
    assert policies.of("ticker:fast") == "conflate"
    assert policies.of("t1") == "drop-oldest"
    assert policies.of("chat") == "disconnect"
    assert Policies("conflate").of("anything") == "conflate"
    assert not Policies("disconnect")
    assert not Policies(None)
    assert Policies({"x": "conflate"})


def test_the_strictest_policy_of_a_subscriptions_channels_wins() -> None:
    policies = Policies({"a": "conflate", "b": "drop-oldest"})
    assert policies.of_subscription(["a"]) == "conflate"
    assert policies.of_subscription(["a", "b"]) == "drop-oldest"
    assert policies.of_subscription(["a", "b", "c"]) == "disconnect"


@pytest.mark.parametrize(
    "rules", ["latest", {"a": "drop"}, {"": "conflate"}, {1: "conflate"}, ["conflate"]]
)
def test_rules_that_are_not_patterns_and_policies_are_refused(rules: object) -> None:
    with pytest.raises(ValueError, match=r"polic|pattern"):
        Policies(rules)  # type: ignore[arg-type]


def test_the_cache_of_channel_names_stays_bounded() -> None:
    policies = Policies({"tick*": "conflate"})
    for n in range(10_000):
        assert policies.of(f"tick{n}") == "conflate"
    assert len(policies._cache) <= 4096


def subscriber(policy: str) -> Subscriber:
    sub = Subscriber(("c",))
    sub.policy = policy
    sub.kind = policy == "conflate"
    return sub


def offer(sub: Subscriber, item: object, limit: int, counters: Counters) -> None:
    """What the fan-out does: append while there is room, else the policy's path."""
    if len(sub.queue) >= limit or sub.latest is not None:
        overflow(sub, item, limit, counters)
    else:
        sub.queue.append(item)


def test_a_drop_oldest_queue_holds_a_gap_and_the_newest() -> None:
    counters = Counters()
    sub = subscriber("drop-oldest")
    for n in range(10):
        offer(sub, Event(n, id=str(n)), 4, counters)
    assert len(sub.queue) == 4
    gap, *rest = take(sub, 10, counters)
    assert (gap.event, json.loads(gap.data), gap.id) == ("sse-gap", {"skipped": 6}, "5")
    assert [e.data for e in rest] == [6, 7, 8, 9]
    assert not sub.queue
    assert sub.gap is None
    assert (counters.dropped, counters.gaps) == (6, 1)


def test_a_conflate_queue_keeps_every_event_until_it_lags_then_one_per_key() -> None:
    counters = Counters()
    sub = subscriber("conflate")
    for n, key in enumerate("ab"):
        offer(sub, (("c", key), Event(n)), 3, counters)
    assert [e.data for e in take(sub, 10, counters)] == [0, 1]
    for n, key in enumerate("aabab"):
        offer(sub, (("c", key), Event(n)), 3, counters)
    # a0 a1 b2 fill it; a3 supersedes a0 a1 (order: b2 a3); b4 supersedes b2.
    assert sub.latest is not None
    assert [e.data for e in take(sub, 10, counters)] == [3, 4]
    assert counters.conflated == 3
    assert sub.latest is None  # caught up
    assert take(sub, 10, counters) == []


def test_a_lagging_conflate_queue_stays_bounded_by_its_keys() -> None:
    counters = Counters()
    sub = subscriber("conflate")
    for n in range(100_000):
        offer(sub, (("c", n % 7), Event(n)), 50, counters)
    assert len(sub.queue) <= 2 * (50 + 7) + 1
    assert [e.data for e in take(sub, 1000, counters)] == list(range(100_000 - 7, 100_000))
    assert counters.conflated == 100_000 - 7


def test_replay_by_policy() -> None:
    entries = [(Event(n, id=str(n)), ("c", "k" + str(n % 2))) for n in range(6)]
    counters = Counters()
    assert [e.data for e in replay("disconnect", entries, 2, counters)] == list(range(6))
    assert [e.data for e in replay("conflate", entries, 2, counters)] == [4, 5]
    gap, *rest = replay("drop-oldest", entries, 2, counters)
    assert gap == gap_event(4, "3")
    assert [e.data for e in rest] == [4, 5]
    assert (counters.conflated, counters.dropped, counters.gaps) == (4, 4, 1)
