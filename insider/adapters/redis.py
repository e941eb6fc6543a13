"""The sent-message cache on Redis: one hash per provider message id, with a time to live."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from insider.adapters.encoding import json_bytes
from insider.original import SENT_LIST_MAX, sent_item
from insider.ports import SentEntry

DEFAULT_TTL_S = 7 * 86400
# Field names of the hash; other programs read them, so they are part of the contract.
FIELD_MESSAGE_ID = "messageId"
FIELD_SENT_AT = "sentAt"
FIELD_ID = "id"

# KEYS: one per entry (declared, as scripts should), then the list's key when there is one;
# ARGV: the TTL, one JSON array holding [messageId, sentAt, id] for each entry key, in
# order, and with a list, one JSON array of its items and how many items it keeps.
_REMEMBER = f"""
local ttl = ARGV[1]
local rows = cjson.decode(ARGV[2])
for i, row in ipairs(rows) do
    redis.call('HSET', KEYS[i], '{FIELD_MESSAGE_ID}', row[1], '{FIELD_SENT_AT}', row[2], '{FIELD_ID}', row[3])
    redis.call('EXPIRE', KEYS[i], ttl)
end
if ARGV[3] then
    local list = KEYS[#rows + 1]
    for _, item in ipairs(cjson.decode(ARGV[3])) do
        redis.call('RPUSH', list, item)
    end
    redis.call('LTRIM', list, -tonumber(ARGV[4]), -1)
end
return #rows
"""

# KEYS: the entries' keys; returns the `id` field of each, in order (nil where the key is
# absent, or is not a hash: then the database decides).
_LOOKUP_IDS = f"""
local ids = {{}}
for i, key in ipairs(KEYS) do
    local id = redis.pcall('HGET', key, '{FIELD_ID}')
    if type(id) == 'table' then id = false end
    ids[i] = id
end
return ids
"""


@asynccontextmanager
async def open_redis(url: str) -> AsyncIterator[aioredis.Redis]:
    """A Redis client for ``url``, closed on exit.

    Socket timeouts bound every call, so a lost Redis makes calls fail within seconds
    instead of hanging; one quick retry rides over a connection dropped by a restart.
    """
    client = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=2,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1),
        health_check_interval=30,
    )
    try:
        yield client
    finally:
        await client.aclose()


class RedisSentCache:
    """Sent messages as hashes ``<prefix>:sent:<provider message id>``.

    Each hash holds ``messageId``, ``sentAt`` (ISO 8601 UTC) and ``id`` (ours), and
    expires after ``ttl_s`` seconds. With ``sent_list``, each entry is also pushed (RPUSH)
    to that list as the original Go service did, ``{"messageId", "sentAt"}`` in JSON, and
    the list is trimmed to its newest ``sent_list_max`` items. Errors propagate; the
    caller logs them.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "insider",
        ttl_s: float = DEFAULT_TTL_S,
        sent_list: str = "",
        sent_list_max: int = SENT_LIST_MAX,
    ) -> None:
        if not ttl_s > 0 or not math.isfinite(ttl_s):
            raise ValueError(f"ttl_s must be a positive number of seconds, not {ttl_s!r}")
        if sent_list_max < 1:
            raise ValueError(f"sent_list_max must be at least 1, not {sent_list_max!r}")
        self._client = client
        self._prefix = prefix
        self._sent_list = sent_list
        self._sent_list_max = sent_list_max
        # EXPIRE takes whole seconds; round up so an entry never lives shorter than asked.
        self._ttl_s = max(1, math.ceil(ttl_s))

    def key(self, provider_message_id: str) -> str:
        """The Redis key of one provider message id."""
        return f"{self._prefix}:sent:{provider_message_id}"

    async def remember(self, entries: Sequence[SentEntry]) -> None:
        """Write every entry in one round trip: one script call for the whole batch.

        A script rather than a pipeline of HSET and EXPIRE pairs: the same writes, but one
        command to encode instead of two per entry, which was a tenth of the sender's
        CPU time while draining (docs/performance.md). The values travel as one JSON
        argument, which halves the client's work again (16 to 8 us per entry).
        """
        if not entries:
            return
        keys = [self.key(entry.provider_message_id) for entry in entries]
        rows = [(entry.provider_message_id, _utc(entry.sent_at).isoformat(), str(entry.id)) for entry in entries]
        if not self._sent_list:
            await self._client.eval(_REMEMBER, len(keys), *keys, self._ttl_s, json_bytes(rows))
            return
        # Each item is the JSON text the original pushed; the array of them travels as JSON too.
        items = [json_bytes(sent_item(e.provider_message_id, e.sent_at)).decode() for e in entries]
        await self._client.eval(
            _REMEMBER,
            len(keys) + 1,
            *keys,
            self._sent_list,
            self._ttl_s,
            json_bytes(rows),
            json_bytes(items),
            self._sent_list_max,
        )

    async def lookup(self, provider_message_id: str) -> SentEntry | None:
        """The cached entry, or None when absent, expired or not readable."""
        raw = await self._client.hgetall(self.key(provider_message_id))
        return _entry(provider_message_id, raw)

    async def lookup_ids(self, provider_message_ids: Sequence[str]) -> dict[str, int]:
        """Our ids of the cached provider ids (the ``id`` field), in one round trip; absent ones are left out.

        One script call rather than a pipeline of HGETs: one command to encode and one
        reply to parse instead of one per receipt, which cost as much of the service's
        time as the database write of the same receipts.
        """
        if not provider_message_ids:
            return {}
        keys = [self.key(provider_message_id) for provider_message_id in provider_message_ids]
        values = await self._client.eval(_LOOKUP_IDS, len(keys), *keys)
        found = {}
        for provider_message_id, value in zip(provider_message_ids, values, strict=True):
            if value is None:
                continue
            try:
                found[provider_message_id] = int(_text(value))
            except ValueError:  # not written by us: the database decides
                continue
        return found

    async def ping(self) -> None:
        """Return when Redis answers; raise when it does not."""
        await self._client.ping()


def _utc(when: datetime) -> datetime:
    # Times in this codebase are aware UTC; a naive one is taken to be UTC already.
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _text(value: bytes | str) -> str:
    # Decoded already when the client has decode_responses; bytes otherwise.
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _entry(provider_message_id: str, raw: Mapping[bytes | str, bytes | str]) -> SentEntry | None:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    sent_at, our_id = fields.get(FIELD_SENT_AT), fields.get(FIELD_ID)
    if sent_at is None or our_id is None:
        return None
    try:
        return SentEntry(
            provider_message_id=fields.get(FIELD_MESSAGE_ID) or provider_message_id,
            sent_at=_utc(datetime.fromisoformat(sent_at)),
            id=int(our_id),
        )
    except ValueError:
        return None
