"""Idempotency-Key: the header read and checked, and an enqueue stored once per key and body."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from aiohttp import web

from insider.domain import Message, NewMessage
from insider.ports import IdempotencyConflict, IdempotencyKey, Intake
from insider.web.responses import error_response

# Printable ASCII without spaces at the ends, as clients make them (UUIDs, ULIDs, ...).
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")

# The header as the spec shows it, on both enqueue routes.
IDEMPOTENCY_DOC = {
    "in": "header",
    "name": "Idempotency-Key",
    "type": "string",
    "required": False,
    "maxLength": 255,
    "description": "Retry-safe enqueue: the same key with the same body within 24 hours answers the same "
    "messages again (same status code, header Idempotent-Replayed: true) and queues nothing; another body: 409",
}


async def idempotency_key(request: web.Request) -> IdempotencyKey | web.Response | None:
    """The request's Idempotency-Key with a digest of what it asks, None without one, or a 400."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(key):
        return error_response(
            400,
            "invalid Idempotency-Key",
            {"Idempotency-Key": ["1 to 255 printable ASCII characters, no spaces at the ends"]},
        )
    body = json.loads(await request.text())
    canonical = json.dumps([request.path, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return IdempotencyKey(key, hashlib.sha256(canonical.encode()).hexdigest())


async def store_once(
    request: web.Request, repository: Intake, messages: list[NewMessage], body: Callable[[list[Message]], Any]
) -> web.Response:
    """Store the messages, or answer again what the first request with this key and body stored.

    201 with ``body`` of the messages (and ``Idempotent-Replayed: true`` when they are that
    earlier answer), or the 400 (a bad key) or 409 (the key was used with another body).
    """
    idempotency = await idempotency_key(request)
    if isinstance(idempotency, web.Response):
        return idempotency
    try:
        enqueued = await repository.enqueue_many(messages, idempotency)
    except IdempotencyConflict:
        return error_response(
            409,
            "this Idempotency-Key was used with another request body in the last 24 hours",
            {"Idempotency-Key": ["already used with another body"]},
        )
    response = web.json_response(body(enqueued.messages), status=201)
    if enqueued.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
