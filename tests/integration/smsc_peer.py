"""An SMSC for tests, on smpp34's server: records what it is sent, answers as told, holds answers, sends deliver_sm."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import smpp34

HOLD = -1  # an answer policy's value: keep the submit unanswered until released


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Submit:
    """One submit_sm as the SMSC saw it, and what it answered."""

    event: smpp34.SubmitSmEvent
    message_id: str
    status: int | None = None  # None while held


@dataclass
class SmscPeer:
    """smpp34.Server on 127.0.0.1 with a policy for answers.

    ``policy(event)`` gives the command_status to answer (0 accepts with a fresh message id),
    or :data:`HOLD`. Held submits wait for :meth:`release`. ``outstanding`` counts submits not
    yet answered; ``max_outstanding`` the most at once.
    """

    port: int = field(default_factory=free_port)
    policy: Callable[[smpp34.SubmitSmEvent], int] = lambda _: 0
    submits: list[Submit] = field(default_factory=list)
    sessions: dict[str, smpp34.Esme] = field(default_factory=dict)
    unbound: list[str] = field(default_factory=list)
    max_outstanding: int = 0
    _server: smpp34.Server | None = None
    _pump: asyncio.Task[None] | None = None

    @property
    def outstanding(self) -> int:
        return sum(1 for s in self.submits if s.status is None)

    @property
    def held(self) -> list[Submit]:
        return [s for s in self.submits if s.status is None]

    @property
    def session(self) -> smpp34.Esme:
        assert self.sessions, "no ESME is bound"
        return list(self.sessions.values())[-1]

    async def start(self) -> None:
        self._server = smpp34.Server("127.0.0.1", self.port, system_id="TESTSMSC")
        await self._server.start()
        self._pump = asyncio.create_task(self._run())

    async def _run(self) -> None:
        assert self._server is not None
        while True:
            event = await self._server.next()
            if isinstance(event, smpp34.Esme):
                self.sessions[event.session_id] = event
            elif isinstance(event, smpp34.Unbound):
                self.sessions.pop(event.session_id, None)
                self.unbound.append(event.session_id)
            else:
                submit = Submit(event, f"msg-{len(self.submits) + 1}")
                self.submits.append(submit)
                self.max_outstanding = max(self.max_outstanding, self.outstanding)
                status = self.policy(event)
                if status != HOLD:
                    self._answer(submit, status)

    def _answer(self, submit: Submit, status: int) -> None:
        submit.status = status
        if status == 0:
            submit.event.accept(message_id=submit.message_id)
        else:
            submit.event.reject(status)

    def release(self, count: int | None = None, status: int = 0) -> int:
        """Answer the first ``count`` held submits (all by default) with ``status``; how many."""
        held = self.held[:count]
        for submit in held:
            self._answer(submit, status)
        return len(held)

    async def deliver(self, short_message: bytes = b"", **fields: Any) -> int:
        """Send a deliver_sm on the latest session; the command_status of its deliver_sm_resp."""
        fields.setdefault("source_addr", "905301234567")
        fields.setdefault("source_addr_ton", 1)
        fields.setdefault("source_addr_npi", 1)
        destination = fields.pop("destination_addr", "INSIDER")
        response = await self.session.deliver_sm(destination, short_message, **fields)
        return int(response.command_status)

    async def close(self) -> None:
        for esme in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(esme.unbind(), 2)
        self.release(status=0x08)
        if self._server is not None:
            await self._server.stop()
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.wait({self._pump})

    async def __aenter__(self) -> SmscPeer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class PduTap:
    """A TCP proxy that reads the command_id of every PDU each way (by smpp34's codec): what flows, not how.

    ``seen`` lists ``(direction, command_id)``, direction ``"esme"`` (client to SMSC) or ``"smsc"``.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.seen: list[tuple[str, int]] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        self._links.update({writer, up_writer})
        try:
            await asyncio.gather(self._pipe("esme", reader, up_writer), self._pipe("smsc", up_reader, writer))
        finally:
            self._handlers.discard(task)

    async def _pipe(self, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(4)
                rest = await reader.readexactly(int.from_bytes(head, "big") - 4)
                pdu = smpp34.decode(head + rest)
                self.seen.append((direction, pdu.command_id))
                writer.write(head + rest)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5.0)
