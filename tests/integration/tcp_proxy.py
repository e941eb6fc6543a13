"""A TCP proxy for outage tests: forwards to a server; can cut every connection, or black-hole them."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class TcpProxy:
    """Listens on 127.0.0.1 (a free port) and forwards each connection to ``target_host:target_port``.

    ``cut()`` drops every open connection and makes new ones fail at once (accepted,
    then closed: the client sees the server go away); ``black_hole()`` keeps every
    connection open but lets no byte through either way, and accepts new ones that never
    answer (packets that vanish: the client only learns of it by a timeout);
    ``restore()`` forwards again. The server behind it is never touched.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._open = True
        self._swallowing = False
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections = 0  # forwarded so far
        self.swallowed = 0  # bytes the black hole took

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def is_cut(self) -> bool:
        return not self._open

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until ``restore()``."""
        self._open = False
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()

    def black_hole(self) -> None:
        """From now on nothing gets through, and nothing is closed: every read waits for ever."""
        self._swallowing = True

    def restore(self) -> None:
        """Forward new connections again."""
        self._open = True
        self._swallowing = False

    async def close(self) -> None:
        self._swallowing = False
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._handlers:
            # Their connections were aborted, so they end on their own; cancelling them
            # would make asyncio's stream callback log the cancellation as an error.
            _, stuck = await asyncio.wait(set(self._handlers), timeout=5.0)
            for task in stuck:
                task.cancel()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _refusing(self) -> bool:
        return not self._open

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self._swallowing:  # accepted, never answered
                try:
                    with contextlib.suppress(ConnectionError, OSError):
                        while data := await reader.read(65536):
                            self.swallowed += len(data)
                finally:
                    writer.transport.abort()
                return
            if self._refusing():
                writer.transport.abort()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
            except OSError:
                writer.transport.abort()
                return
            if self._refusing():  # cut while connecting
                writer.transport.abort()
                up_writer.transport.abort()
                return
            self.connections += 1
            link = (writer, up_writer)
            self._links.add(link)
            pipes = {
                asyncio.create_task(self._pipe(reader, up_writer)),
                asyncio.create_task(self._pipe(up_reader, writer)),
            }
            try:
                # Either side closing ends the link: the other side must see it too.
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pipe in pipes:
                    pipe.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                self._links.discard(link)
                writer.transport.abort()
                up_writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                if self._swallowing:
                    self.swallowed += len(data)
                    continue
                writer.write(data)
                await writer.drain()
