"""The Redis edge: idempotent window buckets and alert state. Thin; the math is in windows.py.

Key layout (see docs/windows.md):

* ``{prefix}:win:{category}:{bucket_start}`` hash of counters (fields in streams.windows)
* ``{prefix}:seen:{judgment_id}`` string "1", the idempotency marker, EX ttl
* ``{prefix}:categories`` set of categories that have had a judgment
* ``{prefix}:alert:{rule_id}:{category}`` hash of an AlertState

Redis errors propagate: the caller (a Faust agent) retries the batch, which is safe because
applying a judgment twice counts it once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import redis

from schemas.judgments import Judgment
from streams.alerting import AlertState
from streams.windows import (
    DEFAULT_BUCKET_SECONDS,
    WindowAggregate,
    WindowStats,
    bucket_start,
    counter_updates,
)

#: Judgments per EVALSHA: big enough to be fast, small enough not to block Redis for long.
APPLY_CHUNK = 500

# KEYS: categories set, then per judgment (seen key, bucket key).
# ARGV[1]: ttl; ARGV[2]: JSON array, per judgment [category, {field: increment}].
# One JSON argument instead of one argument per field: redis-py packs arguments in pure Python,
# which was the bottleneck. Phase 1 claims each judgment's seen-marker (SET NX) and sums the new
# ones' increments per (bucket, field) in Lua; phase 2 writes one HINCRBYFLOAT per
# (bucket, field) and one EXPIRE per bucket: a batch spans few buckets, so few Redis calls.
# Returns the (1-based) positions of the judgments that were newly applied.
_APPLY_LUA = """
local ttl = tonumber(ARGV[1])
local updates = cjson.decode(ARGV[2])
local applied = {}
local sums = {}
local order = {}
local categories = {}
for i, update in ipairs(updates) do
  local seen, key = KEYS[2 * i], KEYS[2 * i + 1]
  if redis.call('SET', seen, '1', 'NX', 'EX', ttl) then
    local bucket = sums[key]
    if not bucket then
      bucket = {}
      sums[key] = bucket
      order[#order + 1] = key
    end
    for field, value in pairs(update[2]) do
      bucket[field] = (bucket[field] or 0) + value
    end
    categories[update[1]] = true
    applied[#applied + 1] = i
  end
end
for _, key in ipairs(order) do
  for field, value in pairs(sums[key]) do
    redis.call('HINCRBYFLOAT', key, field, string.format('%.17g', value))
  end
  redis.call('EXPIRE', key, ttl)
end
for category, _ in pairs(categories) do
  redis.call('SADD', KEYS[1], category)
end
return applied
"""

# KEYS[1]: the state hash. ARGV[1]: expected version; then field, value pairs (version included).
_CAS_LUA = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _floats(raw: Mapping[Any, Any]) -> dict[str, float]:
    return {_text(k): float(_text(v)) for k, v in raw.items()}


class WindowStore:
    """Per-category event-time buckets in Redis, applied idempotently by judgment id."""

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str,
        bucket_seconds: int = DEFAULT_BUCKET_SECONDS,
        ttl_seconds: int = 2 * 86400,
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.bucket_seconds = bucket_seconds
        self.ttl_seconds = ttl_seconds
        self._apply = redis_client.register_script(_APPLY_LUA)

    def bucket_key(self, category: str, start: int) -> str:
        """``{prefix}:win:{category}:{bucket_start}``."""
        return f"{self.prefix}:win:{category}:{start}"

    def seen_key(self, judgment_id: str) -> str:
        """``{prefix}:seen:{judgment_id}``: set once, the first time the judgment is applied."""
        return f"{self.prefix}:seen:{judgment_id}"

    @property
    def categories_key(self) -> str:
        return f"{self.prefix}:categories"

    def apply(self, judgments: Sequence[Judgment]) -> int:
        """Add each judgment's counters to its bucket once; returns how many were new."""
        return len(self.apply_new(judgments))

    def apply_new(self, judgments: Sequence[Judgment]) -> list[Judgment]:
        """Add each judgment's counters to its bucket once; returns the ones that were new."""
        new: list[Judgment] = []
        for offset in range(0, len(judgments), APPLY_CHUNK):
            chunk = judgments[offset : offset + APPLY_CHUNK]
            keys, args = self._script_args(chunk)
            new += [chunk[int(position) - 1] for position in self._apply(keys=keys, args=args)]
        return new

    def read_buckets(self, category: str, starts: Sequence[int]) -> dict[int, dict[str, float]]:
        """The counters of ``category``'s buckets at ``starts`` (empty for a bucket with none)."""
        pipe = self.redis.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(self.bucket_key(category, start))
        return {start: _floats(raw) for start, raw in zip(starts, pipe.execute(), strict=True)}

    def _script_args(self, judgments: Sequence[Judgment]) -> tuple[list[str], list[str | int]]:
        keys: list[str] = [self.categories_key]
        updates: list[tuple[str, dict[str, float]]] = []
        for judgment in judgments:
            start = bucket_start(judgment.event_time.timestamp(), self.bucket_seconds)
            keys += [self.seen_key(judgment.judgment_id), self.bucket_key(judgment.category, start)]
            updates.append((judgment.category, counter_updates(judgment)))
        # json.dumps writes floats with repr(): full precision survives into Lua.
        return keys, [self.ttl_seconds, json.dumps(updates, ensure_ascii=False)]

    def read(self, category: str, window_s: int, end_epoch: float, confidence: float = 0.95) -> WindowStats:
        """The window ``[end_epoch - window_s, end_epoch)`` of ``category``, from its buckets."""
        aggregate = WindowAggregate(window_s, end_epoch, self.bucket_seconds, confidence)
        for start, counters in self.read_buckets(category, aggregate.covering_buckets()).items():
            aggregate.update(start, counters)
        return aggregate.result()

    def categories(self) -> set[str]:
        """Every category that has had a judgment applied (within the TTL of its buckets)."""
        return {_text(member) for member in self.redis.smembers(self.categories_key)}

    def clear(self) -> int:
        """Delete every key under this prefix (for rebuilds); returns how many were deleted."""
        deleted = 0
        batch: list[Any] = []
        for key in self.redis.scan_iter(match=f"{self.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(self.redis.unlink(*batch))
                batch = []
        if batch:
            deleted += int(self.redis.unlink(*batch))
        return deleted


class AlertStateStore:
    """AlertState per (rule, category) in a Redis hash, with an atomic check-and-set on version."""

    def __init__(self, redis_client: redis.Redis, prefix: str) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self._cas = redis_client.register_script(_CAS_LUA)

    def key(self, rule_id: str, category: str) -> str:
        """``{prefix}:alert:{rule_id}:{category}``."""
        return f"{self.prefix}:alert:{rule_id}:{category}"

    def get(self, rule_id: str, category: str) -> AlertState:
        """The stored state, or the initial 'ok' state (version 0)."""
        raw = self.redis.hgetall(self.key(rule_id, category))
        return AlertState.from_dict({_text(k): _text(v) for k, v in raw.items()})

    def put(self, rule_id: str, category: str, state: AlertState, expected_version: int) -> AlertState | None:
        """Store ``state`` as version ``expected_version + 1`` if the stored version is still
        ``expected_version``; returns the stored state, or None when another worker won the race
        (then do NOT emit: the winner does)."""
        stored = replace(state, version=expected_version + 1)
        fields = [item for pair in stored.to_dict().items() for item in pair]
        ok = self._cas(keys=[self.key(rule_id, category)], args=[expected_version, *fields])
        return stored if int(ok) == 1 else None
