"""Presence in Redis: every worker's connections per channel, with leases.

What lives in Redis per channel ``c``, under the broker's ``key_prefix``
(the channel in braces, so that a channel's keys share a Cluster slot):

* ``presence:{c}:m``, a hash: ``<worker>\\n<identity>`` -> that worker's
  connections of that identity (the identity ``""`` counts the anonymous);
* ``presence:{c}:t``, a hash: ``<identity>`` -> connections over every live
  worker;
* ``presence:{c}:a``, a set: the identities whose ``sse-join`` went out
  and whose ``sse-leave`` has not;
* ``presence:{c}:l``, a sorted set: each worker's lease on the channel,
  scored by when it runs out (milliseconds, Redis's own clock, so hosts'
  clocks never matter).

One Lua script does everything, atomically: it first takes away the
members of every worker whose lease ran out (and says which identities
that leaves with nobody, for their ``sse-leave``), then applies a change,
settles a leave or reads the totals. Every call renews the keys' TTL, so a
channel that every worker left, or whose workers all died, leaves nothing
behind after ``SSE_PRESENCE_TTL``.

Beside it, for the operator page, ``admin:w`` (a hash: worker -> its
latest stats as JSON) and ``admin:l`` (the workers' leases, as above).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import Any, Final

from redis.exceptions import NoScriptError, ResponseError

from .._presence import Change, Outcome
from .base import BrokerUnavailableError

__all__ = ["RedisStore", "worker_name"]

_PRUNE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local M, T, A, L = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, me, ttl, announce = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local lease = redis.call('ZSCORE', L, me)
local lost = (not lease) or tonumber(lease) <= now
local left = {}
-- Workers whose lease ran out: their members go.
local dead = redis.call('ZRANGEBYSCORE', L, '-inf', now)
if #dead > 0 then
  local is_dead = {}
  for _, w in ipairs(dead) do is_dead[w] = true end
  local all = redis.call('HGETALL', M)
  for i = 1, #all, 2 do
    local cut = string.find(all[i], '\\n', 1, true)
    if is_dead[string.sub(all[i], 1, cut - 1)] then
      local key = string.sub(all[i], cut + 1)
      redis.call('HDEL', M, all[i])
      if redis.call('HINCRBY', T, key, -tonumber(all[i + 1])) <= 0 then
        redis.call('HDEL', T, key)
        if key ~= '' and redis.call('SREM', A, key) == 1 then table.insert(left, key) end
      end
    end
  end
  redis.call('ZREM', L, unpack(dead))
end
local function keep()
  for _, k in ipairs(KEYS) do redis.call('PEXPIRE', k, ttl) end
end
"""

_SCRIPT: Final = (
    _PRUNE
    + """
if mode == 'read' then
  keep()
  return {0, left, {}, {}, redis.call('HGETALL', T)}
end
if mode == 'settle' then
  local key = ARGV[5]
  if redis.call('HEXISTS', T, key) == 0 and redis.call('SREM', A, key) == 1 then
    table.insert(left, key)
  end
  keep()
  return {0, left, {}, {}, {}}
end
-- mode 'apply': ARGV[5] fresh, ARGV[6] gone, then identity, count pairs.
local fresh = ARGV[5] == '1'
if lost and not fresh then
  keep()
  return {1, left, {}, {}, {}}
end
local deltas, order = {}, {}
local function add(key, d)
  if deltas[key] == nil then deltas[key] = 0; table.insert(order, key) end
  deltas[key] = deltas[key] + d
end
if fresh then
  -- Counts are absolute: take away whatever of ours is still there.
  local prefix = me .. '\\n'
  local all = redis.call('HGETALL', M)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #prefix) == prefix then
      add(string.sub(all[i], #prefix + 1), -tonumber(all[i + 1]))
    end
  end
end
for i = 7, #ARGV, 2 do add(ARGV[i], tonumber(ARGV[i + 1])) end
local joined, absent = {}, {}
for _, key in ipairs(order) do
  local delta = deltas[key]
  if delta ~= 0 then
    local field = me .. '\\n' .. key
    if redis.call('HINCRBY', M, field, delta) <= 0 then redis.call('HDEL', M, field) end
    local total = redis.call('HINCRBY', T, key, delta)
    if total <= 0 then
      redis.call('HDEL', T, key)
      if key ~= '' and total - delta > 0 then table.insert(absent, key) end
    elseif total - delta <= 0 and key ~= '' and announce then
      if redis.call('SADD', A, key) == 1 then table.insert(joined, key) end
    end
  end
end
if ARGV[6] == '1' then
  redis.call('ZREM', L, me)
else
  redis.call('ZADD', L, now + ttl, me)
end
keep()
return {0, left, joined, absent, {}}
"""
)
_SHA: Final = hashlib.sha1(_SCRIPT.encode()).hexdigest()

# The operator page's per-worker stats: put (ARGV[3] the JSON) or get.
_ADMIN_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #dead > 0 then
  redis.call('ZREM', KEYS[2], unpack(dead))
  redis.call('HDEL', KEYS[1], unpack(dead))
end
if ARGV[3] then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
  return {}
end
return redis.call('HVALS', KEYS[1])
"""
_ADMIN_SHA: Final = hashlib.sha1(_ADMIN_SCRIPT.encode()).hexdigest()


def worker_name() -> str:
    """A name for this process, unique among the workers sharing a Redis."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


Execute = Callable[[Sequence[tuple[Any, ...]]], list[Any]]


class RedisStore:
    """The presence store of a :class:`~flask_sse_stream.RedisBroker`'s process.

    :param execute: runs commands on the broker's pool, in its home hub.
    :param prefix: the broker's key prefix.
    :param ttl: seconds a lease lasts; the tracker renews it a third of that apart.
    """

    leases = True

    def __init__(self, execute: Execute, prefix: str, ttl: float) -> None:
        self._execute = execute
        self._prefix = prefix
        self._ttl_ms = max(1, round(ttl * 1000))
        self.worker = worker_name()
        """This process's name in Redis."""

    def _keys(self, channel: str) -> tuple[str, str, str, str]:
        base = f"{self._prefix}presence:{{{channel}}}:"
        return base + "m", base + "t", base + "a", base + "l"

    def _head(self, channel: str, mode: str, announce: bool) -> tuple[Any, ...]:
        return (4, *self._keys(channel), mode, self.worker, self._ttl_ms, int(announce))

    def _run(self, sha: str, script: str, calls: list[tuple[Any, ...]]) -> list[Any]:
        """Run the script once per ``calls`` (its arguments), in one round trip."""
        replies = self._execute([("EVALSHA", sha, *args) for args in calls])
        if any(isinstance(reply, NoScriptError) for reply in replies):
            # A restarted or flushed Redis: EVAL also caches it again.
            replies = [
                self._execute([("EVAL", script, *args)])[0]
                if isinstance(reply, NoScriptError)
                else reply
                for reply, args in zip(replies, calls, strict=True)
            ]
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise BrokerUnavailableError(f"Redis refused a presence update: {reply}")
        return replies

    def apply(self, changes: Sequence[Change]) -> list[Outcome]:
        """Apply ``changes``, one script call each, all in one round trip."""
        calls = []
        for change in changes:
            pairs = [item for key, count in change.counts.items() for item in (key, count)]
            calls.append(
                (
                    *self._head(change.channel, "apply", change.announce),
                    int(change.fresh),
                    int(change.gone),
                    *pairs,
                )
            )
        return [_outcome(reply) for reply in self._run(_SHA, _SCRIPT, calls)]

    def settle(self, channel: str, key: str, announce: bool) -> Outcome:
        """Send ``key``'s leave if no worker holds it; see :class:`~._presence.Store`."""
        (reply,) = self._run(_SHA, _SCRIPT, [(*self._head(channel, "settle", announce), key)])
        return _outcome(reply)

    def read(self, channel: str, announce: bool) -> tuple[dict[str, int], Outcome]:
        """Connections per identity on ``channel`` over every live worker."""
        (reply,) = self._run(_SHA, _SCRIPT, [self._head(channel, "read", announce)])
        flat = reply[4]
        totals = {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        return {key: n for key, n in totals.items() if n > 0}, _outcome(reply)

    # The operator page.

    def _admin_keys(self) -> tuple[int, str, str]:
        return 2, f"{self._prefix}admin:w", f"{self._prefix}admin:l"

    def put_stats(self, stats: dict[str, Any], ttl: float) -> None:
        """Publish this worker's stats for ``ttl`` seconds."""
        blob = json.dumps(stats, separators=(",", ":"))
        args = (*self._admin_keys(), self.worker, max(1, round(ttl * 1000)), blob)
        self._run(_ADMIN_SHA, _ADMIN_SCRIPT, [args])

    def worker_stats(self) -> list[dict[str, Any]]:
        """Every live worker's latest stats."""
        args = (*self._admin_keys(), self.worker, 1)
        (reply,) = self._run(_ADMIN_SHA, _ADMIN_SCRIPT, [args])
        return [json.loads(blob) for blob in reply]


def _outcome(reply: list[Any]) -> Outcome:
    lost, left, joined, absent = reply[:4]
    return Outcome(
        joined=[key.decode() for key in joined],
        absent=[key.decode() for key in absent],
        left=[key.decode() for key in left],
        lost=bool(lost),
    )
