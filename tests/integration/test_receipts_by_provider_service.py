"""Receipts by provider through the real service: a webhook and an SMSC that hand out the same id.

alpha (a webhook on a local port) and carrier (an SMPP bind to a real SMSC, smpp34's server)
both answer the first message they take with the id ``msg-1``. HTTP receipts name their
provider with ``?provider=``; the bind's ``deliver_sm`` receipts name carrier.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from insider.adapters.smpp import SmppSmsClient
from insider.config import load_settings
from insider.container import Container, resolve
from insider.domain import Message, MessageStatus
from insider.ports import MessageRepository
from insider.supervisor import Supervisor
from insider.web.app import create_app
from tests.conftest import eventually
from tests.integration.smsc_peer import SmscPeer

TOKEN = "dlr-secret-token"
URL = "/api/v1/delivery-reports"
TO_ALPHA = "+905301234001"  # the route sends +90 through alpha
TO_CARRIER = "+12125550123"  # and everything else through carrier
RECEIPT = b"id:msg-1 sub:001 dlvrd:001 submit date:2612010930 done date:2612010931 stat:DELIVRD err:000 text:x"


@dataclass
class Service:
    client: TestClient[Any, Any]
    repository: MessageRepository
    supervisor: Supervisor
    smsc: SmscPeer

    async def post(self, body: Any, query: str = "") -> tuple[int, Any]:
        response = await self.client.post(URL + query, json=body, headers={"x-ins-auth-key": TOKEN})
        return response.status, await response.json()

    async def sent(self, to: str) -> Message:
        queued = await self.repository.enqueue(to, "hello")
        await self.supervisor.run_once()
        got = await self.repository.get(queued.id)
        assert got is not None and got.status is MessageStatus.SENT
        return got

    async def status(self, message: Message) -> tuple[str, str | None]:
        got = await self.repository.get(message.id)
        assert got is not None
        return got.status.value, got.delivery_status


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def service(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Service]:
    if request.param == "postgres":
        database_url: str = request.getfixturevalue("fresh_postgres_url")
    else:
        database_url = f"sqlite:///{tmp_path / 'insider.db'}"

    async def send(request: web.Request) -> web.Response:
        return web.json_response({"message": "Accepted", "messageId": "msg-1"}, status=202)

    webhook = web.Application()
    webhook.router.add_post("/send", send)
    async with SmscPeer() as smsc, TestServer(webhook) as alpha:
        path = tmp_path / "providers.toml"
        path.write_text(
            f"""
[[providers]]
name = "alpha"
url = "{alpha.make_url("/send")}"

[[providers]]
name = "carrier"
kind = "smpp"
host = "127.0.0.1"
port = {smsc.port}
system_id = "insider"
password = "secret"
source = "INSIDER"

[[routes]]
match = {{ prefix = ["+90"] }}
providers = ["alpha"]

[[routes]]
providers = ["carrier"]
"""
        )
        settings = load_settings(
            {
                "INSIDER_DATABASE_URL": database_url,
                "INSIDER_PROVIDERS_FILE": str(path),
                "INSIDER_DLR_TOKEN": TOKEN,
                "INSIDER_AUTOSTART": "false",
                "INSIDER_REDIS_URL": "",
            },
            env_file=None,
        )
        container = Container(settings=settings)
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(container)))
        await client.start_server()
        try:
            clients = await resolve(container.provider_clients)
            carrier = clients["carrier"]
            assert isinstance(carrier, SmppSmsClient)
            await eventually(lambda: carrier.state == "bound", what="carrier's bind")
            yield Service(client, await resolve(container.repository), await resolve(container.supervisor), smsc)
        finally:
            await client.close()


async def test_http_receipts_naming_their_provider_each_meet_that_providers_message(service: Service) -> None:
    alpha = await service.sent(TO_ALPHA)
    carrier = await service.sent(TO_CARRIER)
    assert (alpha.message_id, alpha.provider, carrier.message_id, carrier.provider) == (
        "msg-1",
        "alpha",
        "msg-1",
        "carrier",
    )

    status, body = await service.post([{"messageId": "msg-1", "status": "UNDELIV"}], "?provider=carrier")
    assert (status, body) == (200, {"received": 1, "results": [{"messageId": "msg-1", "result": "applied"}]})
    assert await service.status(carrier) == ("undelivered", "undelivered")
    assert await service.status(alpha) == ("sent", None)

    # Unnamed, the id is two providers': applied to neither, and said so in the log. A
    # provider field in the body names nothing (extra fields are ignored).
    with structlog.testing.capture_logs() as logs:
        status, body = await service.post({"messageId": "msg-1", "status": "DELIVRD", "provider": "alpha"})
    assert (status, body["results"]) == (200, [{"messageId": "msg-1", "result": "ambiguous"}])
    assert await service.status(alpha) == ("sent", None)
    assert [(e["log_level"], e["count"]) for e in logs if e["event"].startswith("receipts applied to no message")] == [
        ("warning", 1)
    ]

    status, body = await service.post({"messageId": "msg-1", "status": "DELIVRD"}, "?provider=alpha")
    assert (status, body["results"]) == (200, [{"messageId": "msg-1", "result": "applied"}])
    assert await service.status(alpha) == ("delivered", "delivered")
    assert await service.status(carrier) == ("undelivered", "undelivered")


async def test_a_provider_that_is_not_configured_is_a_422_and_nothing_is_applied(service: Service) -> None:
    alpha = await service.sent(TO_ALPHA)

    for query, problem in [
        ("?provider=beta", "no provider has that name: receipts come from one of alpha, carrier"),
        ("?provider=", "must name a provider (alpha, carrier), or be left out"),
    ]:
        status, body = await service.post({"messageId": "msg-1", "status": "DELIVRD"}, query)
        assert (status, body) == (422, {"error": "unknown provider", "fields": {"provider": [problem]}})
    assert await service.status(alpha) == ("sent", None)


async def test_a_deliver_sm_receipt_names_the_provider_of_its_bind(service: Service) -> None:
    alpha = await service.sent(TO_ALPHA)
    carrier = await service.sent(TO_CARRIER)
    assert alpha.message_id == carrier.message_id == "msg-1"

    assert await service.smsc.deliver(RECEIPT, esm_class=0x04) == 0

    async def carrier_delivered() -> bool:
        return await service.status(carrier) == ("delivered", "delivered")

    await eventually(carrier_delivered, what="carrier's message delivered by its bind's receipt")
    assert await service.status(alpha) == ("sent", None)
    history = await service.repository.events(carrier.id)
    assert [(e.kind, e.receipt_status) for e in history] == [("attempt", None), ("receipt", "DELIVRD")]


async def test_swagger_describes_the_provider_parameter_and_the_ambiguous_result(service: Service) -> None:
    spec = await (await service.client.get("/api/docs/swagger.json")).json()

    [operation] = spec["paths"]["/api/v1/delivery-reports"].values()
    [provider] = [p for p in operation["parameters"] if p["name"] == "provider"]
    assert (provider["in"], provider["type"], provider["required"]) == ("query", "string", False)
    assert "422" in operation["responses"]
    result = spec["definitions"]["ReceiptResult"]["properties"]["result"]
    assert "ambiguous" in result["enum"] and "ambiguous:" in result["description"]


async def test_an_unnamed_receipt_waiting_for_an_id_two_providers_record_at_once_meets_neither(
    service: Service,
) -> None:
    status, body = await service.post({"messageId": "msg-1", "status": "DELIVRD"})
    assert (status, body["results"]) == (200, [{"messageId": "msg-1", "result": "waiting"}])
    alpha = await service.repository.enqueue(TO_ALPHA, "hello")
    carrier = await service.repository.enqueue(TO_CARRIER, "hello")

    with structlog.testing.capture_logs() as logs:
        await service.supervisor.run_once()  # both in one batch: their outcomes in one write

    for message in (alpha, carrier):
        got = await service.repository.get(message.id)
        assert got is not None and (got.status, got.message_id) == (MessageStatus.SENT, "msg-1")
    assert [(e["log_level"], e["count"]) for e in logs if e["event"].startswith("receipts applied to no message")] == [
        ("warning", 1)
    ]
