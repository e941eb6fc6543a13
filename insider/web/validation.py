"""The routes' request schemas checked with webargs: what they parse is ``request[VALIDATED]``; a bad field, a 422."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any, Final, NoReturn

from aiohttp import web
from marshmallow import ValidationError
from webargs.aiohttpparser import AIOHTTPParser

# What the matched route's request schemas parsed: its JSON body (``@request_schema``), its query
# string (``@querystring_schema``) and its path's parts (``@match_info_schema``).
VALIDATED: web.RequestKey[dict[str, Any]] = web.RequestKey("validated", dict)
QUERY: web.RequestKey[dict[str, Any]] = web.RequestKey("querystring", dict)
PATH: web.RequestKey[dict[str, Any]] = web.RequestKey("match_info", dict)
# Where aiohttp-apispec's decorators say to put what their schema parsed (``put_into``).
_PUT_INTO: Final = MappingProxyType({"querystring": QUERY, "match_info": PATH})


def _flatten(name: str, problems: Any, into: dict[str, list[str]]) -> None:
    """Nested problems (a list's items: ``{"messages": {3: [...]}}``) as dotted names (``messages.3``)."""
    if isinstance(problems, dict):
        for key, inner in problems.items():
            _flatten(f"{name}.{key}", inner, into)
    else:
        into[name] = [str(p) for p in problems] if isinstance(problems, list) else [str(problems)]


def _validation_error(error: ValidationError, req: Any, schema: Any, *args: Any, **kwargs: Any) -> NoReturn:
    """webargs' error hook: a JSON 422 naming each bad field (or 400 for a body that is no object)."""
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    if "match_info" in messages:  # a path id of the right digits but out of range names nothing
        raise web.HTTPNotFound(text=json.dumps({"error": "not found"}), content_type="application/json")
    # webargs nests by location ({"json": {...}}); the client wants the field names.
    flat: dict[str, list[str]] = {}
    for location in messages.values():
        items = location.items() if isinstance(location, dict) else [("_schema", location)]
        for name, problems in items:
            _flatten(str(name), problems, flat)
    if set(flat) == {"_schema"}:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "the body must be a JSON object", "fields": flat}),
            content_type="application/json",
        )
    raise web.HTTPUnprocessableEntity(
        text=json.dumps({"error": "invalid input", "fields": flat}), content_type="application/json"
    )


# webargs' parser with the error hook above; never written to. Not webargs' own parser
# (``webargs.aiohttpparser.parser``, which aiohttp-apispec's middleware uses and its set-up
# gives an error hook): that one is the process's, and an embedding program's too.
PARSER = AIOHTTPParser(error_handler=_validation_error)


@web.middleware
async def validate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """aiohttp-apispec's ``validation_middleware`` with the parser above: the matched handler's request
    schemas (its ``__schemas__``, from ``@request_schema`` and the like) parse the request; what one
    puts into ``querystring`` or ``match_info`` is ``request[QUERY]`` or ``request[PATH]``."""
    schemas = getattr(request.match_info.handler, "__schemas__", None)
    if schemas is not None:
        data: dict[str, Any] = {}
        for schema in schemas:
            parsed = await PARSER.parse(schema["schema"], request, location=schema["location"], unknown=None)
            if schema["put_into"]:
                request[_PUT_INTO[schema["put_into"]]] = parsed
            else:
                data.update(parsed)
        request[VALIDATED] = data
    return await handler(request)
