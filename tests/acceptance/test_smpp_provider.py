"""The service sending through an `smpp` provider to `simulate --smpp-port`, both as subprocesses, seen through the API.

Submits, the SMSC's ids, receipts as deliver_sm, long and UCS-2 messages in parts, throttling
that slows the provider without failing messages, and an SMSC that goes down and comes back.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.acceptance.conftest import Service, free_port, log_events, wait_answering
from tests.conftest import eventually

PHONE = "+905301234001"
SHORT = "Merhaba, kodunuz 123456"
LONG_GSM7 = "Kampanya: " + "indirim " * 24  # 202 septets: two parts of 153 at most
LONG_UCS2 = "Çağrı " * 30  # 180 UTF-16 units: three parts of 67 at most


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as opened:
        yield opened


class Smsc:
    """`python -m insider simulate --smpp-port P` and its HTTP side (GET /smsc, POST /smsc/down, /smsc/up)."""

    def __init__(self, simulator: Service, smpp_port: int, session: aiohttp.ClientSession) -> None:
        self.simulator = simulator
        self.smpp_port = smpp_port
        self.session = session

    async def state(self) -> dict[str, Any]:
        async with self.session.get(self.simulator.base_url + "/smsc") as response:
            assert response.status == 200
            return dict(await response.json())

    async def post(self, path: str) -> None:
        async with self.session.post(self.simulator.base_url + path) as response:
            assert response.status == 200

    def submitted_ids(self) -> list[str]:
        """The message ids the SMSC gave in its submit_sm_resp, in order (from its log)."""
        return [
            e["provider_message_id"] for e in log_events(self.simulator.log()) if e["event"] == "simulated submit_sm"
        ]


async def _smsc(start_service: Callable[..., Service], session: aiohttp.ClientSession, *options: str) -> Smsc:
    return await _smsc_on(start_service, session, free_port(), *options)


async def _smsc_on(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, smpp_port: int, *options: str
) -> Smsc:
    port = str(free_port())
    simulator = start_service(
        "simulate", "--port", port, "--smpp-port", str(smpp_port), "--latency", "0", *options, port=port
    )
    await wait_answering(session, simulator.process, simulator.log, simulator.base_url + "/healthz")
    return Smsc(simulator, smpp_port, session)


def _providers_file(tmp_path: Path, smsc: Smsc, extra: str = "") -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(
        f"""
[[providers]]
name = "carrier"
kind = "smpp"
host = "127.0.0.1"
port = {smsc.smpp_port}
system_id = "insider"
password = "secret"
source = "INSIDER"
window = 10
breaker_cooldown = "0.5s"
{extra}
"""
    )
    return path


async def _service(
    start_service: Callable[..., Service],
    session: aiohttp.ClientSession,
    tmp_path: Path,
    smsc: Smsc,
    extra: str = "",
    **settings: str,
) -> Service:
    service = start_service(
        database_url=f"sqlite:///{tmp_path / 'insider.db'}",
        providers_file=str(_providers_file(tmp_path, smsc, extra)),
        send_interval="0",
        batch_size="10",
        content_max_length="1000",
        retry_backoff="0.2s",
        retry_backoff_max="0.5s",
        **settings,
    )
    await service.wait_answering(session)
    return service


async def _queue(session: aiohttp.ClientSession, service: Service, content: str) -> int:
    async with session.post(service.base_url + "/api/v1/messages", json={"to": PHONE, "content": content}) as response:
        assert response.status == 201, await response.text()
        return int((await response.json())["id"])


async def _message(session: aiohttp.ClientSession, service: Service, message_id: int) -> dict[str, Any]:
    async with session.get(f"{service.base_url}/api/v1/messages/{message_id}") as response:
        assert response.status == 200
        return dict(await response.json())


async def _history(session: aiohttp.ClientSession, service: Service, message_id: int) -> list[dict[str, Any]]:
    async with session.get(f"{service.base_url}/api/v1/messages/{message_id}/events") as response:
        assert response.status == 200
        return list((await response.json())["data"])


async def _all_delivered(session: aiohttp.ClientSession, service: Service, ids: list[int]) -> bool:
    statuses = [(await _message(session, service, i))["status"] for i in ids]
    assert "failed" not in statuses, statuses
    return all(s == "delivered" for s in statuses)


async def test_messages_are_submitted_and_their_deliver_sm_receipts_make_them_delivered(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    smsc = await _smsc(start_service, session, "--dlr-delay", "100ms", "--undelivered-rate", "0")
    service = await _service(start_service, session, tmp_path, smsc)
    ids = [await _queue(session, service, text) for text in (SHORT, LONG_GSM7, LONG_UCS2)]

    await eventually(lambda: _all_delivered(session, service, ids), timeout_s=30, what="three receipts applied")

    messages = [await _message(session, service, i) for i in ids]
    assert [(m["encoding"], m["segments"]) for m in messages] == [("GSM-7", 1), ("GSM-7", 2), ("UCS-2", 3)]
    submitted = smsc.submitted_ids()
    assert len(submitted) == 6  # one, two parts, three parts
    # Each message keeps an id the SMSC gave (its last part's, the one its receipt is asked on).
    assert len({m["messageId"] for m in messages}) == 3 and {m["messageId"] for m in messages} <= set(submitted)
    for message in messages:
        history = await _history(session, service, message["id"])
        assert [(e["kind"], e["outcome"]) for e in history] == [("attempt", "sent"), ("receipt", "delivered")]
        assert {e["providerMessageId"] for e in history} == {message["messageId"]}
        assert history[1]["doneAt"] is not None
        assert message["deliveryStatus"] == "delivered" and message["deliveredAt"] is not None
    state = await smsc.state()
    assert (state["binds"], state["counts"]["accepted"], state["counts"]["receiptsSent"]) == (1, 6, 3)
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=20) == 0
    assert "SMPP unbound" in [e["event"] for e in log_events(service.log())]  # let go of the bind on the way out
    assert PHONE not in service.log()


def _at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["at"]).timestamp()


async def test_an_smsc_throttling_slows_the_provider_without_failing_a_message(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    throttling = await _smsc(start_service, session, "--rate-limit-rate", "1")  # ESME_RTHROTTLED to every submit
    # One submit at a time, so that what follows a throttled one is seen in order.
    service = await _service(start_service, session, tmp_path, throttling, "concurrency = 1")
    ids = [await _queue(session, service, f"message {n}") for n in range(6)]

    async def throttled_thrice() -> bool:
        return bool((await throttling.state())["counts"]["throttled"] >= 3)

    await eventually(throttled_thrice, timeout_s=20, what="three throttled submits")
    # The same SMSC, no longer throttling: stopped, and started again on the same port.
    throttling.simulator.process.terminate()
    assert throttling.simulator.process.wait(timeout=20) == 0
    smsc = await _smsc_on(
        start_service, session, throttling.smpp_port, "--dlr-delay", "100ms", "--undelivered-rate", "0"
    )
    await eventually(lambda: _all_delivered(session, service, ids), timeout_s=40, what="every message delivered")

    histories = [await _history(session, service, i) for i in ids]
    attempts = sorted((e for history in histories for e in history if e["kind"] == "attempt"), key=_at)
    refused = [e for e in attempts if e["outcome"] == "throttled"]
    assert len(refused) >= 3 and all("ESME_RTHROTTLED" in e["error"] for e in refused)
    assert [e["outcome"] for e in attempts].count("sent") == len(ids)  # and no attempt failed
    # The provider was left alone 1 s, then 2 s (doubling while it goes on) before the next submit.
    gaps = [_at(later) - _at(earlier) for earlier, later in itertools.pairwise(refused[:3])]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps
    assert (await smsc.state())["counts"]["accepted"] == len(ids)  # each once


async def test_the_smsc_going_down_and_up_loses_nothing(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    smsc = await _smsc(start_service, session, "--dlr-delay", "100ms", "--undelivered-rate", "0")
    service = await _service(start_service, session, tmp_path, smsc)
    before = [await _queue(session, service, f"before {n}") for n in range(3)]
    await eventually(lambda: _all_delivered(session, service, before), timeout_s=30, what="the first receipts")

    await smsc.post("/smsc/down")

    async def unbound() -> bool:
        return bool((await smsc.state())["binds"] == 0)

    await eventually(unbound, what="the bind dropped")
    during = [await _queue(session, service, f"during {n}") for n in range(5)]

    async def tried() -> bool:  # the service has tried them on the missing bind
        return any(m["attempts"] > 0 for m in [await _message(session, service, i) for i in during])

    await eventually(tried, timeout_s=20, what="a try while the SMSC is down")
    assert [(await _message(session, service, i))["status"] for i in during] == ["pending"] * len(during)

    await smsc.post("/smsc/up")
    await eventually(lambda: _all_delivered(session, service, during), timeout_s=60, what="the rest delivered")

    state = await smsc.state()
    assert state["binds"] == 1 and state["counts"]["binds"] == 2  # bound again, once
    assert state["counts"]["accepted"] == len(before) + len(during)  # nothing lost, nothing twice
    for message_id in during:
        history = await _history(session, service, message_id)
        assert history[-2:][0]["outcome"] == "sent" and history[-1]["kind"] == "receipt"
        assert all("not bound" in (e["error"] or "") for e in history[:-2])
    events = [e["event"] for e in log_events(service.log())]
    assert "SMPP bind down; binding again with backoff" in events and "SMPP bound again" in events


async def test_a_handsets_reply_through_the_smsc_is_stored_under_the_provider_and_its_stop_suppresses(
    start_service: Callable[..., Service], session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    smsc = await _smsc(start_service, session, "--dlr-delay", "100ms")
    service = await _service(start_service, session, tmp_path, smsc)

    async def bound() -> bool:
        return bool((await smsc.state())["binds"] == 1)

    await eventually(bound, what="the bind")
    for text in ("Evet, geliyorum 👍", "ıptal"):
        async with session.post(smsc.simulator.base_url + "/smsc/replies", json={"from": PHONE, "text": text}) as sent:
            assert sent.status == 200, await sent.text()

    async def replies() -> list[dict[str, Any]]:
        async with session.get(service.base_url + "/api/v1/inbound") as response:
            assert response.status == 200
            return list((await response.json())["data"])

    async def both_stored() -> bool:
        return len(await replies()) == 2

    await eventually(both_stored, what="both replies stored")
    stored = await replies()
    assert [(r["from"], r["to"], r["text"], r["action"], r["provider"]) for r in stored] == [
        (PHONE, "INSIDER", "ıptal", "opt-out", "carrier"),
        (PHONE, "INSIDER", "Evet, geliyorum 👍", None, "carrier"),
    ]
    message_id = await _queue(session, service, SHORT)
    assert (await _message(session, service, message_id))["status"] == "suppressed"
    assert (await smsc.state())["counts"]["accepted"] == 0
    assert PHONE not in service.log()
