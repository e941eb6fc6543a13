"""JSON as bytes for what the adapters send out: orjson, with a fallback for text it refuses."""

from __future__ import annotations

import json

import orjson


def json_bytes(value: object) -> bytes:
    """``value`` as compact UTF-8 JSON.

    orjson refuses a lone surrogate (it has no UTF-8 form); the standard library writes it as
    a ``\\u`` escape instead, which keeps the JSON valid, so such text still goes out.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode("ascii")
