"""The cluster's sequenced log in a Redis stream, with a lease that decides
which node may append, and appends fenced against a stale holder.

Every log entry has an explicit stream ID `<position>-0`, positions growing
by exactly one. An append runs as one Lua script (atomic in Redis) that
checks, before writing anything, that the caller still holds the lease, that
the cluster's epoch is the caller's, and that the caller's next position is
the log's next position. A sequencer that was paused past its lease and wakes
up therefore fails whole: it cannot interleave a single entry with its
successor's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias, cast

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from orderbook.core.errors import OrderbookError

# KEYS: lease, epoch, log, position, cursor
# ARGV: token, epoch, first position, input cursor ('' = leave), entries...
_APPEND = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease not held')
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return redis.error_reply('FENCED epoch changed')
end
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
local first = tonumber(ARGV[3])
if first ~= last + 1 then
  return redis.error_reply('FENCED log is at ' .. last)
end
for i = 5, #ARGV do
  redis.call('XADD', KEYS[3], string.format('%d-0', first + i - 5), 'e', ARGV[i])
end
redis.call('SET', KEYS[4], string.format('%d', last + #ARGV - 4))
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[5], ARGV[4])
end
return last + #ARGV - 4
"""

# KEYS: lease, epoch, snapshot, log; ARGV: token, epoch, snapshot, minimum position kept
_SNAPSHOT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED lease not held')
end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return redis.error_reply('FENCED epoch changed')
end
redis.call('SET', KEYS[3], ARGV[3])
return redis.call('XTRIM', KEYS[4], 'MINID', string.format('%d-0', tonumber(ARGV[4])))
"""

# KEYS: lease; ARGV: token, ttl ms
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease; ARGV: token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


# An XREAD reply as this client gets it (RESP2, the default protocol):
# [[stream, [(id, {field: value}), ...]], ...], None when nothing came. redis-py
# types it as the union of every protocol's shape, so it is cast to this one.
# Ids and field names are read as bytes or str; values are the bytes written.
_XReadReply: TypeAlias = list[tuple[bytes | str, list[tuple[bytes | str, dict[bytes | str, bytes]]]]] | None


class Fenced(OrderbookError):
    """An append or renewal by a node that no longer holds the lease (or
    whose epoch or position is out of date). Nothing was written."""


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "orderbook"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def lease(self) -> str:
        return f"{self.prefix}:lease"

    @property
    def log(self) -> str:
        return f"{self.prefix}:log"

    @property
    def position(self) -> str:
        return f"{self.prefix}:position"

    @property
    def cursor(self) -> str:
        return f"{self.prefix}:cursor"

    @property
    def input(self) -> str:
        return f"{self.prefix}:input"

    @property
    def snapshot(self) -> str:
        return f"{self.prefix}:snapshot"


@dataclass(frozen=True, slots=True)
class LogEntry:
    position: int
    data: bytes


class RedisLog:
    def __init__(self, client: aioredis.Redis, keys: Keys = Keys()) -> None:
        self._r = client
        self.keys = keys
        self._append = client.register_script(_APPEND)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._snapshot = client.register_script(_SNAPSHOT)

    async def drop_idle_connections(self) -> None:
        """After an outage, pooled connections still look open but fail on
        first use: close the idle ones so the next commands reconnect."""
        await self._r.connection_pool.disconnect(inuse_connections=False)

    # Epoch ------------------------------------------------------------------
    async def epoch(self, candidate: int | None = None) -> int | None:
        """The cluster's epoch; with `candidate`, create it if Redis has none
        (a new cluster, or Redis restarted empty)."""
        if candidate is not None:
            await self._r.set(self.keys.epoch, str(candidate), nx=True)
        raw = await self._r.get(self.keys.epoch)
        return int(raw) if raw is not None else None

    # Lease ------------------------------------------------------------------
    async def acquire(self, token: str, ttl_ms: int) -> bool:
        """Take the lease if it is free, or extend it if it is ours."""
        if await self._r.set(self.keys.lease, token, nx=True, px=ttl_ms):
            return True
        return bool(await self._renew(keys=[self.keys.lease], args=[token, ttl_ms]))

    async def renew(self, token: str, ttl_ms: int) -> bool:
        return bool(await self._renew(keys=[self.keys.lease], args=[token, ttl_ms]))

    async def release(self, token: str) -> bool:
        return bool(await self._release(keys=[self.keys.lease], args=[token]))

    async def holder(self) -> str | None:
        raw = await self._r.get(self.keys.lease)
        return raw.decode() if isinstance(raw, bytes) else raw

    # Log --------------------------------------------------------------------
    async def position(self) -> int:
        raw = await self._r.get(self.keys.position)
        return int(raw) if raw is not None else 0

    async def cursor(self) -> str | None:
        raw = await self._r.get(self.keys.cursor)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def append(
        self, token: str, epoch: int, first_position: int, entries: list[bytes], cursor: str | None = None
    ) -> int:
        """Append `entries` at `first_position` onward; return the last position.
        Raises `Fenced` (writing nothing) unless the caller holds the lease,
        the epoch is current and `first_position` is the log's next one."""
        k = self.keys
        try:
            last = await self._append(
                keys=[k.lease, k.epoch, k.log, k.position, k.cursor],
                args=[token, str(epoch), first_position, cursor or "", *entries],
            )
        except ResponseError as exc:
            if "FENCED" in str(exc):
                raise Fenced(str(exc)) from None
            raise
        return int(last)

    async def read(self, after: int, count: int = 1000, block_ms: int | None = None) -> list[LogEntry]:
        """Entries after position `after`, oldest first; waits up to `block_ms`
        for the first one when given."""
        reply = cast(_XReadReply, await self._r.xread({self.keys.log: f"{after}-0"}, count=count, block=block_ms))
        out: list[LogEntry] = []
        for _stream, items in reply or ():
            for entry_id, fields in items:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.append(LogEntry(int(eid.split("-", 1)[0]), fields[b"e"] if b"e" in fields else fields["e"]))
        return out

    # Snapshots --------------------------------------------------------------
    async def save_snapshot(self, token: str, epoch: int, data: bytes, keep_from: int) -> int:
        """Store the cluster snapshot and drop log entries before `keep_from`
        (fenced like an append); return how many entries were dropped."""
        k = self.keys
        try:
            return int(
                await self._snapshot(
                    keys=[k.lease, k.epoch, k.snapshot, k.log], args=[token, str(epoch), data, max(keep_from, 1)]
                )
            )
        except ResponseError as exc:
            if "FENCED" in str(exc):
                raise Fenced(str(exc)) from None
            raise

    async def load_snapshot(self) -> bytes | None:
        raw = await self._r.get(self.keys.snapshot)
        return raw.encode() if isinstance(raw, str) else raw

    # Input ------------------------------------------------------------------
    async def submit(self, batch: bytes) -> str:
        """Queue a publisher batch (a FeedMessage) for whichever node sequences."""
        entry_id = await self._r.xadd(self.keys.input, {"b": batch})
        return entry_id.decode() if isinstance(entry_id, bytes) else entry_id

    async def read_input(self, after: str, count: int = 100, block_ms: int | None = None) -> list[tuple[str, bytes]]:
        reply = cast(_XReadReply, await self._r.xread({self.keys.input: after}, count=count, block=block_ms))
        out = []
        for _stream, items in reply or ():
            for entry_id, fields in items:
                eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                out.append((eid, fields.get(b"b", b"")))
        return out

    async def trim_before(self, position: int) -> int:
        """Drop entries older than `position` (kept: `position` and after)."""
        return int(await self._r.xtrim(self.keys.log, minid=f"{position}-0", approximate=False))
