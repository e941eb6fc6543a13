"""The SMPP client against a real SMSC on smpp34's server: binds, submits, windows, outages and receipts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import smpp34
from structlog.testing import capture_logs

from insider.adapters.smpp import SmppSmsClient
from insider.adapters.smpp_codec import TLV_MESSAGE_STATE, TLV_NETWORK_ERROR_CODE, TLV_RECEIPTED_MESSAGE_ID
from insider.clock import FakeClock
from insider.domain import Outcome, SendResult
from insider.receipt_parsing import parse_receipts
from tests.conftest import eventually
from tests.integration.smsc_peer import HOLD, PduTap, SmscPeer, free_port
from tests.integration.tcp_proxy import TcpProxy

TO = "+905301234567"
PASSWORD = "s3cr3tpw"
ENQUIRE_LINK = 0x00000015
ENQUIRE_LINK_RESP = 0x80000015


class Bind:
    """A client and its run() in a task of the test's own, finished (and awaited) afterwards."""

    def __init__(self, client: SmppSmsClient, clock: FakeClock) -> None:
        self.client = client
        self.clock = clock
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.client.run())

    async def bound(self) -> None:
        await eventually(lambda: self.client.state == "bound", what="the bind")

    async def stop(self) -> None:
        self.client.finish()
        task = self.task
        if task is None:
            return

        async def ended() -> bool:
            await self.clock.advance(1.0)  # every wait of run() is on the fake clock
            return task.done()

        await eventually(ended, what="run() to end")
        task.result()


@pytest.fixture
async def smsc() -> AsyncIterator[SmscPeer]:
    async with SmscPeer() as peer:
        yield peer


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def binds(clock: FakeClock) -> AsyncIterator[Callable[..., Awaitable[Bind]]]:
    made: list[Bind] = []

    async def make(port: int, *, start: bool = True, wait: bool = True, **options: Any) -> Bind:
        options.setdefault("source", "INSIDER")
        options.setdefault("bind_timeout_s", 2.0)
        client = SmppSmsClient("carrier", "127.0.0.1", port, "insider", PASSWORD, clock=clock, **options)
        bind = Bind(client, clock)
        made.append(bind)
        if start:
            bind.start()
            if wait:
                await bind.bound()
        return bind

    yield make
    for bind in made:
        await bind.stop()


async def test_binds_and_sends_gsm7_with_the_id_from_submit_sm_resp(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    bind = await binds(smsc.port)
    assert bind.client.bound_since is not None
    text = "Merhaba, kodunuz 1234 @ €5 {ok}"

    result = await bind.client.send(TO, text, "key-1")

    assert result == SendResult(Outcome.SENT, provider_message_id="msg-1")
    event = smsc.submits[0].event
    assert event.data_coding == 0
    assert event.short_message == text.encode("gsm03.38")  # one octet per septet, € and {} escaped
    assert (event.destination_addr, event.dest_addr_ton, event.dest_addr_npi) == ("905301234567", 1, 1)
    assert (event.source_addr, event.source_addr_ton, event.source_addr_npi) == ("INSIDER", 5, 0)
    assert (event.esm_class, event.registered_delivery) == (0, 1)


async def test_a_numeric_source_is_an_international_number(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    bind = await binds(smsc.port, source="+905550001122")

    assert (await bind.client.send(TO, "hi", "k")).outcome is Outcome.SENT

    event = smsc.submits[0].event
    assert (event.source_addr, event.source_addr_ton, event.source_addr_npi) == ("905550001122", 1, 1)


@pytest.mark.parametrize("text", ["Çağrı İstanbul'dan: ÇĞİÖŞÜ çğıöşü", "Merhaba 👋🏽 dünya"])
async def test_text_outside_gsm7_goes_as_ucs2(smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]], text: str) -> None:
    bind = await binds(smsc.port)

    assert (await bind.client.send(TO, text, "k")).outcome is Outcome.SENT

    event = smsc.submits[0].event
    assert (event.data_coding, event.esm_class) == (8, 0)
    assert event.short_message == text.encode("utf-16-be")


def _reassemble(events: list[smpp34.SubmitSmEvent]) -> tuple[list[bytes], bytes]:
    headers = [e.short_message[:6] for e in events]
    return headers, b"".join(e.short_message[6:] for e in events)


async def test_a_long_gsm7_message_goes_as_parts_with_a_udh_and_one_receipt_asked_on_the_last(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    bind = await binds(smsc.port)
    text = "a" * 152 + "€" + "b" * 200  # the € (escape + e) would straddle the first part's end

    result = await bind.client.send(TO, text, "k")

    events = [s.event for s in smsc.submits]
    assert len(events) == 3
    headers, body = _reassemble(events)
    reference = headers[0][3]
    assert headers == [bytes((5, 0, 3, reference, 3, n)) for n in (1, 2, 3)]
    assert body == text.encode("gsm03.38")
    assert [len(e.short_message) - 6 for e in events] == [152, 153, 49]  # the escape went with its €
    assert [e.esm_class for e in events] == [0x40] * 3
    assert [e.registered_delivery for e in events] == [0, 0, 1]
    assert {e.data_coding for e in events} == {0}
    assert result.provider_message_id == "msg-3"  # the last part's: its receipt is the message's

    await bind.client.send(TO, text, "k2")
    assert smsc.submits[3].event.short_message[3] == (reference + 1) % 256  # one reference per message


async def test_a_long_ucs2_message_never_cuts_a_surrogate_pair(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    bind = await binds(smsc.port)
    text = "ç" * 66 + "👋" + "ş" * 70  # the emoji's two units would straddle the first part's end

    assert (await bind.client.send(TO, text, "k")).outcome is Outcome.SENT

    events = [s.event for s in smsc.submits]
    _, body = _reassemble(events)
    assert body == text.encode("utf-16-be")
    assert [len(e.short_message) - 6 for e in events] == [
        2 * 66,
        2 * 67,
        2 * 5,
    ]  # the emoji went whole to the second part
    assert {e.data_coding for e in events} == {8}
    assert [e.registered_delivery for e in events] == [0, 0, 1]


async def test_the_window_of_outstanding_submits_is_never_exceeded(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    smsc.policy = lambda _: HOLD
    bind = await binds(smsc.port, window=3)

    sends = [asyncio.create_task(bind.client.send(TO, f"message {n}", f"k{n}")) for n in range(8)]
    await eventually(lambda: smsc.outstanding == 3, what="three submits at the SMSC")
    while not all(s.done() for s in sends):
        await eventually(lambda: smsc.outstanding > 0 or all(s.done() for s in sends), what="a submit")
        smsc.release(1)  # one answer lets one more out, never more
        await asyncio.sleep(0)

    assert smsc.max_outstanding == 3
    assert len(smsc.submits) == 8
    assert [s.result().outcome for s in sends] == [Outcome.SENT] * 8


async def test_an_answer_that_never_comes_is_an_ambiguous_retry_after_the_timeout(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]], clock: FakeClock
) -> None:
    smsc.policy = lambda _: HOLD
    bind = await binds(smsc.port, timeout_s=5.0)

    send = asyncio.create_task(bind.client.send(TO, "hello", "k"))
    await eventually(lambda: smsc.outstanding == 1, what="the submit at the SMSC")
    await clock.advance(4.9)
    assert not send.done()
    await clock.advance(0.2)
    result = await send

    assert (result.outcome, result.ambiguous, result.throttled) == (Outcome.RETRY, True, False)
    assert "no submit_sm_resp within 5s" in (result.error or "")
    assert bind.client.in_flight == 1  # the SMSC may still answer: its slot stays taken
    smsc.release()
    await eventually(lambda: bind.client.in_flight == 0, what="the slot back")


@pytest.mark.parametrize(
    ("status", "outcome", "throttled", "name"),
    [
        (0x58, Outcome.RETRY, True, "ESME_RTHROTTLED"),
        (0x14, Outcome.RETRY, True, "ESME_RMSGQFUL"),
        (0x08, Outcome.RETRY, False, "ESME_RSYSERR"),
        (0x0B, Outcome.FAILED, False, "ESME_RINVDSTADR"),
        (0x01, Outcome.FAILED, False, "ESME_RINVMSGLEN"),
        (0x45, Outcome.RETRY, False, "ESME_RSUBMITFAIL"),
    ],
)
async def test_error_statuses_are_certain_refusals(
    smsc: SmscPeer,
    binds: Callable[..., Awaitable[Bind]],
    status: int,
    outcome: Outcome,
    throttled: bool,
    name: str,
) -> None:
    smsc.policy = lambda _: status
    bind = await binds(smsc.port)

    result = await bind.client.send(TO, "hello", "k")

    assert (result.outcome, result.throttled, result.ambiguous) == (outcome, throttled, False)
    assert name in (result.error or "")
    assert result.provider_message_id is None


async def test_a_refused_later_part_is_ambiguous_the_earlier_ones_were_taken(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    smsc.policy = lambda event: 0x58 if event.short_message[5] == 2 else 0
    bind = await binds(smsc.port)

    result = await bind.client.send(TO, "x" * 300, "k")

    assert (result.outcome, result.throttled, result.ambiguous) == (Outcome.RETRY, True, True)
    assert "part 2 of 2, after 1 accepted" in (result.error or "")


async def test_not_bound_is_a_certain_retry_at_once(binds: Callable[..., Awaitable[Bind]]) -> None:
    port = free_port()  # nothing listens there
    bind = await binds(port, wait=False)
    await eventually(lambda: bind.client.last_error is not None, what="the refused bind")

    result = await bind.client.send(TO, "hello", "k")

    assert (result.outcome, result.ambiguous) == (Outcome.RETRY, False)
    assert "SMPP provider carrier is not bound (down)" in (result.error or "")
    assert "refused" in (bind.client.last_error or "").lower()
    unstarted = await binds(port, start=False)
    assert (await unstarted.client.send(TO, "hello", "k")).ambiguous is False


async def test_a_bind_refused_at_first_comes_up_once_the_smsc_listens(
    binds: Callable[..., Awaitable[Bind]], clock: FakeClock
) -> None:
    port = free_port()
    with capture_logs() as logs:
        bind = await binds(port, wait=False)
        await eventually(lambda: clock.sleepers > 0 and bind.client.state == "down", what="the backoff")
        async with SmscPeer(port=port) as smsc:

            async def bound() -> bool:
                await clock.advance(1.0)
                return bind.client.state == "bound"

            await eventually(bound, what="the bind")
            assert (await bind.client.send(TO, "hello", "k")).outcome is Outcome.SENT
            assert len(smsc.submits) == 1
            await bind.stop()
    events = [e["event"] for e in logs if e["event"].startswith("SMPP")]
    assert events == ["SMPP bind down; binding again with backoff", "SMPP bound again", "SMPP unbound"]
    assert PASSWORD not in repr(logs) + repr(bind.client)


async def test_a_cut_is_reported_down_then_bound_again_with_backoff(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]], clock: FakeClock
) -> None:
    async with TcpProxy("127.0.0.1", smsc.port) as proxy:
        bind = await binds(proxy.port, bind_timeout_s=0.2, reconnect_backoff_s=1.0, reconnect_backoff_max_s=8.0)
        client = bind.client
        with capture_logs() as logs:
            proxy.cut()
            await eventually(lambda: client.state == "down", what="the cut seen")
            assert client.bound_since is None
            assert "the bind was lost" in (client.last_error or "")
            assert (await client.send(TO, "hello", "k")).ambiguous is False

            waits = []
            for _ in range(4):  # each failed bind waits longer: 1, 2, 4, 8 s at most, half of that at least
                await eventually(lambda: clock.sleepers > 0, what="the backoff")
                wake = clock.next_wake()
                assert wake is not None
                waits.append(wake - clock.monotonic())
                await clock.advance(waits[-1])
                await eventually(lambda: client.state == "down" and clock.sleepers > 0, what="the next failure")
            assert [0.5 * 2**n <= w <= 2**n for n, w in enumerate(waits)] == [True] * 4

            proxy.restore()

            async def bound() -> bool:
                await clock.advance(1.0)
                return client.state == "bound"

            await eventually(bound, what="the bind again")
        assert (await client.send(TO, "hello", "k")).outcome is Outcome.SENT
    events = [e["event"] for e in logs if e["event"].startswith("SMPP")]
    assert events == ["SMPP bind down; binding again with backoff", "SMPP bound again"]  # one line per outage


async def test_the_submit_out_when_the_bind_drops_is_ambiguous(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    smsc.policy = lambda _: HOLD
    async with TcpProxy("127.0.0.1", smsc.port) as proxy:
        bind = await binds(proxy.port)
        send = asyncio.create_task(bind.client.send(TO, "hello", "k"))
        await eventually(lambda: smsc.outstanding == 1, what="the submit at the SMSC")
        proxy.cut()
        result = await send

    assert (result.outcome, result.ambiguous) == (Outcome.RETRY, True)
    assert "may have it" in (result.error or "")


@pytest.mark.timeout(90)
async def test_enquire_link_keeps_an_idle_bind_alive(smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]) -> None:
    tap = PduTap(smsc.port)
    await tap.start()
    try:
        bind = await binds(tap.port)
        # smpp34's core sends enquire_link every 30 s (not settable): this test waits for one.
        await eventually(lambda: ("smsc", ENQUIRE_LINK_RESP) in tap.seen, timeout_s=45, what="an enquire_link")
        assert ("esme", ENQUIRE_LINK) in tap.seen
        assert bind.client.state == "bound"
        assert (await bind.client.send(TO, "still here", "k")).outcome is Outcome.SENT
    finally:
        await tap.close()


RECEIPT_TEXT = (
    b"id:msg-1 sub:001 dlvrd:001 submit date:2612010930 done date:2612010931 stat:DELIVRD err:000 text:Merhaba"
)


async def test_receipts_by_tlv_and_by_text_reach_the_callback_in_the_endpoints_shape(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    got: list[list[dict[str, Any]]] = []

    async def receipts(batch: list[dict[str, Any]]) -> None:
        got.append(batch)

    await binds(smsc.port, receipts=receipts)
    by_tlv = await smsc.deliver(
        RECEIPT_TEXT.replace(b"msg-1", b"text-id"),
        esm_class=0x04,
        tlvs=[
            smpp34.Tlv(TLV_RECEIPTED_MESSAGE_ID, b"msg-7\x00"),
            smpp34.Tlv(TLV_MESSAGE_STATE, bytes([5])),  # UNDELIVERABLE
            smpp34.Tlv(TLV_NETWORK_ERROR_CODE, bytes([3, 0, 34])),
        ],
    )
    by_text = await smsc.deliver(
        b"id:msg-8 sub:001 dlvrd:000 submit date:2612010930 done date:261201093115 stat:UNDELIV err:001 text:x",
        esm_class=0x04,
    )
    await eventually(lambda: sum(len(b) for b in got) == 2, what="both receipts")

    assert (by_tlv, by_text) == (0, 0)
    receipts_got = [r for batch in got for r in batch]
    assert receipts_got == [
        {"messageId": "msg-7", "status": "UNDELIV", "errorCode": "34", "doneAt": "2026-12-01T09:31:00+00:00"},
        {"messageId": "msg-8", "status": "UNDELIV", "errorCode": "001", "doneAt": "2026-12-01T09:31:15+00:00"},
    ]
    parsed = parse_receipts(receipts_got, datetime.now(UTC))  # what POST /api/v1/delivery-reports takes
    assert [(r.provider_message_id, r.delivery_status) for r in parsed] == [
        ("msg-7", "undelivered"),
        ("msg-8", "undelivered"),
    ]


async def test_a_failing_receipts_callback_holds_them_and_the_smsc_sends_the_refused_ones_again(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]], clock: FakeClock
) -> None:
    got: list[str] = []
    healthy = False

    async def receipts(batch: list[dict[str, Any]]) -> None:
        if not healthy:
            raise RuntimeError("database down")
        got.extend(r["messageId"] for r in batch)

    bind = await binds(smsc.port, receipts=receipts, receipt_buffer=1)
    answers: dict[str, int] = {}
    for n in range(1, 11):  # until the held receipts fill the buffers and the SMSC is refused
        receipt_id = f"msg-{n}"
        answers[receipt_id] = await smsc.deliver(RECEIPT_TEXT.replace(b"msg-1", receipt_id.encode()), esm_class=4)
        if answers[receipt_id]:
            break
    refused = [r for r, status in answers.items() if status]
    assert refused and answers[refused[0]] == 0x14  # ESME_RMSGQFUL: the SMSC sends it again later
    assert got == []

    healthy = True
    again = RECEIPT_TEXT.replace(b"msg-1", refused[0].encode())

    async def taken_when_sent_again() -> bool:
        # As an SMSC does: the refused receipt again, until it is taken. smpp34 1.5 writes its
        # refusal one octet too long, so the bind it was refused on breaks at its next PDU and
        # is made again (on the fake clock's backoff).
        await clock.advance(1.0)
        if bind.client.state != "bound" or not smsc.sessions:
            return False
        try:
            return await smsc.deliver(again, esm_class=4) == 0
        except smpp34.SmppError:
            return False

    await eventually(taken_when_sent_again, what="the refused receipt taken")
    await eventually(lambda: set(got) == set(answers), what="every receipt written")


async def test_a_deliver_sm_that_is_not_a_receipt_goes_to_inbound(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    inbound: list[dict[str, Any]] = []
    receipts: list[dict[str, Any]] = []

    async def on_inbound(message: dict[str, Any]) -> None:
        inbound.append(message)

    async def on_receipts(batch: list[dict[str, Any]]) -> None:
        receipts.extend(batch)

    await binds(smsc.port, receipts=on_receipts, inbound=on_inbound)
    assert await smsc.deliver("Evet, geliyorum 👍".encode("utf-16-be"), data_coding=8) == 0
    await eventually(lambda: len(inbound) == 1, what="the reply")

    assert inbound == [{"from": "+905301234567", "to": "INSIDER", "text": "Evet, geliyorum 👍"}]
    assert receipts == []


async def test_an_inbound_message_with_nowhere_to_go_is_logged_masked_and_acknowledged(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    await binds(smsc.port)
    with capture_logs() as logs:
        assert await smsc.deliver(b"STOP") == 0
        await eventually(lambda: any(e["event"] == "SMPP inbound message" for e in logs), what="the log line")

    line = next(e for e in logs if e["event"] == "SMPP inbound message")
    assert line["sender"] == "+905*******67"
    assert "905301234567" not in repr(logs)


async def test_finish_unbinds_and_ends_run(smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]) -> None:
    bind = await binds(smsc.port)
    session = smsc.session.session_id

    await bind.stop()

    assert bind.client.state == "down"
    await eventually(lambda: session in smsc.unbound, what="the unbind at the SMSC")
    result = await bind.client.send(TO, "hello", "k")
    assert (result.outcome, result.ambiguous) == (Outcome.RETRY, False)


async def test_finish_lets_the_submits_in_flight_be_answered_first(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]]
) -> None:
    smsc.policy = lambda _: HOLD
    bind = await binds(smsc.port)
    send = asyncio.create_task(bind.client.send(TO, "hello", "k"))
    await eventually(lambda: smsc.outstanding == 1, what="the submit at the SMSC")

    bind.client.finish()
    assert (await bind.client.send(TO, "later", "k2")).ambiguous is False  # refused at once: finishing
    smsc.release()

    assert (await send).outcome is Outcome.SENT
    await bind.stop()


async def test_a_reply_the_inbound_callback_could_not_write_is_handed_again_with_backoff(
    smsc: SmscPeer, binds: Callable[..., Awaitable[Bind]], clock: FakeClock
) -> None:
    got: list[str] = []
    healthy = False

    async def inbound(message: dict[str, Any]) -> None:
        if not healthy:
            raise RuntimeError("database down")
        got.append(message["text"])

    await binds(smsc.port, inbound=inbound)
    with capture_logs() as logs:
        assert await smsc.deliver(b"STOP") == 0  # acknowledged at once, written later
        # The warning goes just before the backoff's sleep (the bind's other loops sleep on the
        # clock too, so a sleeper alone does not say the backoff began).
        await eventually(lambda: any(e["log_level"] == "warning" for e in logs), what="the warning")
    assert got == []
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "SMPP receipts or replies not written; trying again with backoff"
    ]
    healthy = True
    await clock.advance(1.0)
    await eventually(lambda: got == ["STOP"], what="the reply written")
