"""A fast local SMS provider for the benchmark: answers every POST with 202 and a messageId.

``--latency`` makes every answer wait, like a provider across a network.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

from aiohttp import web


def make_app(latency_s: float = 0.0) -> web.Application:
    counter = itertools.count(1)

    async def webhook(request: web.Request) -> web.Response:
        await request.read()
        if latency_s > 0:
            await asyncio.sleep(latency_s)
        return web.json_response({"message": "Accepted", "messageId": f"bench-{next(counter)}"}, status=202)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/", webhook)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every answer waits")
    args = parser.parse_args()
    web.run_app(make_app(args.latency), host="127.0.0.1", port=args.port, access_log=None, print=None)
