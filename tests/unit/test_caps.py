"""Frequency caps (INSIDER_COMMERCIAL_CAP) on SQLite ``:memory:`` and a fake clock: the setting, the
count (what takes a place, what gives it back), what waits and until when, the suppress action,
the metric, and what the API shows of a held message."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest

from insider.adapters.memory import InMemorySmsClient, Request
from insider.adapters.sql_repository import admit_in_order, recipient_chunks
from insider.adapters.sqlite import _q as sqlite_query
from insider.caps import CapGate, FrequencyCap, parse_frequency_cap
from insider.clock import FakeClock
from insider.config import ConfigError, Settings, default_config_file, load_settings
from insider.consent import CAP, Gate, Verdict, Wait
from insider.container import _consent_gates
from insider.domain import Category, Message, MessageStatus, Outcome, SendResult
from insider.metrics import Metrics
from insider.ports import RepositoryUnavailable
from insider.sender import BatchSender, SenderOptions
from insider.sending_hours import SendingHoursGate, SendingHoursPolicy
from tests.unit.support import ProbedRepository
from tests.unit.test_messages_api import open_api

PHONE = "+905301234001"
OTHER = "+905301234002"
DAY = timedelta(hours=24)


def settings(**values: str) -> Settings:
    env = {f"INSIDER_{k.upper()}": v for k, v in values.items()}
    return load_settings(env, env_file=None, defaults_file=default_config_file())


# --- the setting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cap"),
    [
        ("3/24h", FrequencyCap(3, 86400.0)),
        ("1/30s", FrequencyCap(1, 30.0)),
        ("10/7d", FrequencyCap(10, 7 * 86400.0)),
        (" 2 / 90m ", FrequencyCap(2, 5400.0)),
        ("5/3600", FrequencyCap(5, 3600.0)),
        ("", None),
        ("  ", None),
    ],
)
def test_the_cap_is_messages_per_duration(text: str, cap: FrequencyCap | None) -> None:
    assert parse_frequency_cap(text) == cap
    assert settings(commercial_cap=text).commercial_cap == cap


def test_a_cap_is_written_back_as_it_is_set() -> None:
    assert str(parse_frequency_cap("3/24h")) == "3/24h" and str(parse_frequency_cap(" 2 / 90m ")) == "2/90m"
    assert str(FrequencyCap(3, 86400.0)) == "3/1d" and str(FrequencyCap(1, 30.0)) == "1/30s"


@pytest.mark.parametrize(
    "text", ["3", "3/", "/24h", "0/24h", "-1/24h", "3/0s", "3/soon", "three/24h", "³/24h", "3/-1h", "3/24h/2"]
)
def test_a_bad_cap_stops_start_up_naming_the_variable(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(commercial_cap=text)
    assert str(err.value).startswith("INSIDER_COMMERCIAL_CAP: ")
    assert "\n" not in str(err.value)


def test_the_action_is_wait_by_default_or_suppress() -> None:
    assert settings().commercial_cap_action == "wait"
    assert settings().commercial_cap is None
    assert settings(commercial_cap_action="SUPPRESS").commercial_cap_action == "suppress"
    with pytest.raises(ConfigError) as err:
        settings(commercial_cap_action="drop")
    assert str(err.value).startswith("INSIDER_COMMERCIAL_CAP_ACTION: ")


def test_the_container_adds_the_cap_gate_only_with_a_cap(repo: ProbedRepository, clock: FakeClock) -> None:
    metrics = Metrics()
    assert _consent_gates(settings(), repo, clock, metrics) == []
    [gate] = _consent_gates(settings(commercial_cap="3/24h", commercial_cap_action="suppress"), repo, clock, metrics)
    assert isinstance(gate, CapGate)
    assert (gate.cap, gate.action) == (FrequencyCap(3, 86400.0), "suppress")


def test_the_sending_hours_come_before_the_cap(repo: ProbedRepository, clock: FakeClock) -> None:
    both = settings(commercial_cap="3/24h", sending_hours="08:00-21:00")
    gates = _consent_gates(both, repo, clock, Metrics(), SendingHoursPolicy.from_settings(both))
    assert [type(g) for g in gates] == [SendingHoursGate, CapGate]


# --- the decision --------------------------------------------------------------------------------


def test_the_earliest_time_is_the_oldest_admission_that_must_leave_plus_the_window() -> None:
    t0 = datetime(2026, 1, 1, 9, 0)
    window = timedelta(hours=1)
    at = [t0, t0 + timedelta(minutes=10), t0 + timedelta(minutes=20)]
    now = t0 + timedelta(minutes=30)
    # Three in the window under a cap of 2 (it was lowered): two must leave, the second oldest last.
    assert admit_in_order([(7, PHONE)], {PHONE: at}, 2, window, now) == {7: at[1] + window}
    assert admit_in_order([(7, PHONE)], {PHONE: at[:2]}, 2, window, now) == {7: at[0] + window}
    # Admitted in order: the first takes the last place, the next counts it.
    assert admit_in_order([(7, PHONE), (8, PHONE), (9, OTHER)], {PHONE: at[:1]}, 2, window, now) == {
        7: None,
        8: at[0] + window,
        9: None,
    }


def test_a_batch_is_admitted_in_parts_of_whole_recipients_in_its_order() -> None:
    candidates = [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "b"), (6, "d")]
    assert recipient_chunks(candidates, 2) == [[(1, "a"), (2, "b"), (3, "a"), (5, "b")], [(4, "c"), (6, "d")]]
    assert recipient_chunks(candidates, 10) == [candidates]
    assert recipient_chunks([], 10) == []


def test_the_admissions_are_read_one_index_range_per_recipient(repo: ProbedRepository) -> None:
    def plan(conn: sqlite3.Connection) -> list[str]:
        params = {"phones": json.dumps([PHONE, OTHER]), "ids": "[1]", "since": "2026-01-01T00:00:00.000000Z"}
        return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sqlite_query("cap_admissions"), params)]

    assert (
        "SEARCH messages USING INDEX messages_cap_idx (recipient_phone=? AND cap_admitted_at>?)"
        in repo.database.run_now(plan)
    )


# --- one batch after another ---------------------------------------------------------------------


def commercial(repo: ProbedRepository, clock: FakeClock, *contents: str, phone: str = PHONE) -> list[Message]:
    """Pending commercial messages created one second apart, each newer than every row before."""
    start = clock.now() - timedelta(hours=1) + timedelta(seconds=len(repo.rows))
    return [
        repo.add(phone, c, created_at=start + timedelta(seconds=i), category=Category.COMMERCIAL)
        for i, c in enumerate(contents)
    ]


def capped(
    repo: ProbedRepository,
    sms: InMemorySmsClient,
    clock: FakeClock,
    cap: str = "3/24h",
    action: str = "wait",
    metrics: Metrics | None = None,
) -> BatchSender:
    limit = parse_frequency_cap(cap)
    assert limit is not None
    gate = CapGate(repo, limit, action, held=metrics.cap_held if metrics is not None else None)
    return BatchSender(repo, sms, None, clock, SenderOptions(batch_size=10, retry_backoff_s=30.0), gates=[gate])


def admitted_at(message: Message) -> datetime:
    assert message.cap_admitted_at is not None
    return message.cap_admitted_at


async def current(repo: ProbedRepository, message: Message) -> Message:
    found = await repo.get(message.id)
    assert found is not None
    return found


async def test_over_the_cap_a_message_waits_until_the_first_admission_leaves_the_window(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    metrics = Metrics()
    sender = capped(repo, sms, clock, "3/24h", metrics=metrics)
    *first, fourth = commercial(repo, clock, "c1", "c2", "c3", "c4")
    admitted_at = clock.now()

    report = await sender.run_batch()
    assert [r.content for r in sms.requests] == ["c1", "c2", "c3"]
    assert (report.sent, report.deferred, report.retried) == (3, 1, 0)
    assert {(await current(repo, m)).cap_admitted_at for m in first} == {admitted_at}
    waiting = await current(repo, fourth)
    assert (waiting.status, waiting.wait_reason, waiting.attempts) == (MessageStatus.PENDING, CAP, 0)
    assert waiting.waiting_until == admitted_at + DAY
    [event] = await repo.events(fourth.id)
    assert event.outcome == "deferred"
    until = (admitted_at + DAY).isoformat()
    assert event.error == f"3 commercial messages to this number within 24h: the next may go at {until}"
    assert metrics.registry.get_sample_value("insider_cap_holds_total", {"action": "wait"}) == 1

    await clock.advance(DAY.total_seconds() - 1)
    assert (await sender.run_batch()).claimed == 0  # not due before then: the claim does not read it
    await clock.advance(1)
    report = await sender.run_batch()
    assert (report.sent, report.deferred) == (1, 0)
    assert [r.content for r in sms.requests] == ["c1", "c2", "c3", "c4"]
    sent = await current(repo, fourth)
    assert (sent.status, sent.wait_reason, sent.waiting_until, sent.attempts) == (MessageStatus.SENT, None, None, 1)
    assert [e.outcome for e in await repo.events(fourth.id)] == ["deferred", "sent"]


async def test_the_window_slides(repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock) -> None:
    sender = capped(repo, sms, clock, "2/1h")
    commercial(repo, clock, "a")
    await sender.run_batch()
    first_at = clock.now()
    await clock.advance(600)
    commercial(repo, clock, "b")
    await sender.run_batch()
    await clock.advance(600)
    (c,) = commercial(repo, clock, "c")
    await sender.run_batch()
    assert (await current(repo, c)).waiting_until == first_at + timedelta(hours=1)  # a's place frees first
    await clock.advance(2400)
    await sender.run_batch()
    assert [r.content for r in sms.requests] == ["a", "b", "c"]


async def test_transactional_messages_are_never_capped_and_never_count(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    sender = capped(repo, sms, clock, "1/24h")
    for i in range(4):
        repo.add(PHONE, f"code {i}", created_at=clock.now() - timedelta(minutes=10 - i))
    commercial(repo, clock, "sale")
    report = await sender.run_batch()
    assert (report.sent, report.deferred) == (5, 0)
    assert sorted(r.content for r in sms.requests) == ["code 0", "code 1", "code 2", "code 3", "sale"]
    assert [m.cap_admitted_at is not None for m in repo.rows] == [False] * 4 + [True]


async def test_with_the_suppress_action_a_message_over_the_cap_is_never_sent(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    metrics = Metrics()
    sender = capped(repo, sms, clock, "2/1h", "suppress", metrics)
    *_, third = commercial(repo, clock, "a", "b", "c")
    report = await sender.run_batch()
    assert [r.content for r in sms.requests] == ["a", "b"]
    assert (report.sent, report.suppressed, report.deferred) == (2, 1, 0)
    gone = await current(repo, third)
    assert (gone.status, gone.suppression_reason, gone.attempts, gone.waiting_until) == (
        MessageStatus.SUPPRESSED,
        CAP,
        0,
        None,
    )
    [event] = await repo.events(third.id)
    assert (event.outcome, event.error) == (
        "suppressed",
        "2 commercial messages to this number within 1h already: over the cap, never sent",
    )
    assert metrics.registry.get_sample_value("insider_cap_holds_total", {"action": "suppress"}) == 1
    assert metrics.registry.get_sample_value("insider_cap_holds_total", {"action": "wait"}) == 0
    await clock.advance(7200)
    assert (await sender.run_batch()).claimed == 0  # it never comes back


async def test_each_number_has_its_own_count(repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock) -> None:
    sender = capped(repo, sms, clock, "1/24h")
    _, second = commercial(repo, clock, "tr-1", "tr-2")
    commercial(repo, clock, "other-1", phone=OTHER)
    report = await sender.run_batch()
    assert sorted(r.content for r in sms.requests) == ["other-1", "tr-1"]
    assert (report.sent, report.deferred) == (2, 1)
    assert (await current(repo, second)).wait_reason == CAP


async def test_a_failed_send_gives_its_place_back(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    sender = capped(repo, sms, clock, "1/24h")
    sms.responder = lambda r: SendResult(Outcome.FAILED, status_code=400, error="HTTP 400")
    (refused,) = commercial(repo, clock, "refused")
    await sender.run_batch()
    assert (await current(repo, refused)).status is MessageStatus.FAILED
    sms.responder = None
    (next_one,) = commercial(repo, clock, "next")
    assert (await sender.run_batch()).sent == 1  # the failed one reached nobody: no place taken
    assert (await current(repo, next_one)).status is MessageStatus.SENT


async def test_a_retry_gives_its_place_back_and_takes_one_again_when_next_sent(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    sender = capped(repo, sms, clock, "1/24h")

    def first_fails(request: Request) -> SendResult:
        if request.content == "retried":
            return SendResult(Outcome.RETRY, status_code=503, error="HTTP 503")
        return SendResult(Outcome.SENT, status_code=202, provider_message_id=f"pm-{request.content}")

    sms.responder = first_fails
    (retried,) = commercial(repo, clock, "retried")
    await sender.run_batch()
    assert (await current(repo, retried)).status is MessageStatus.PENDING
    (other,) = commercial(repo, clock, "other")
    admitted_at = clock.now()
    assert (await sender.run_batch()).sent == 1  # the one waiting for its retry holds no place
    assert (await current(repo, other)).status is MessageStatus.SENT
    await clock.advance(60)
    report = await sender.run_batch()
    assert (report.claimed, report.deferred) == (1, 1)
    waiting = await current(repo, retried)
    assert (waiting.wait_reason, waiting.waiting_until) == (CAP, admitted_at + DAY)


async def test_a_message_of_higher_priority_takes_the_place_first(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    sender = capped(repo, sms, clock, "1/24h")
    (low,) = commercial(repo, clock, "low")
    urgent = repo.add(PHONE, "urgent", category=Category.COMMERCIAL, priority=9)
    await sender.run_batch()
    assert [r.content for r in sms.requests] == ["urgent"]
    assert (await current(repo, low)).wait_reason == CAP
    assert (await current(repo, urgent)).status is MessageStatus.SENT


async def test_when_its_time_comes_a_waiting_message_goes_or_waits_again(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    sender = capped(repo, sms, clock, "1/1h")
    _, later = commercial(repo, clock, "first", "later")
    await sender.run_batch()
    assert (await current(repo, later)).waiting_until == clock.now() + timedelta(hours=1)
    await clock.advance(3600)
    urgent = repo.add(PHONE, "urgent", category=Category.COMMERCIAL, priority=9)  # due as the place frees
    await sender.run_batch()
    assert [r.content for r in sms.requests] == ["first", "urgent"]
    again = await current(repo, later)
    assert (again.status, again.wait_reason, again.waiting_until) == (
        MessageStatus.PENDING,
        CAP,
        admitted_at(await current(repo, urgent)) + timedelta(hours=1),
    )
    assert [e.outcome for e in await repo.events(later.id)] == ["deferred", "deferred"]
    await clock.advance(3600)
    await sender.run_batch()
    assert [r.content for r in sms.requests] == ["first", "urgent", "later"]


async def test_a_message_waiting_for_the_cap_still_expires_at_its_valid_until(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    sender = capped(repo, sms, clock, "1/1h")
    commercial(repo, clock, "first")
    brief = repo.add(PHONE, "brief", category=Category.COMMERCIAL, valid_until=clock.now() + timedelta(minutes=30))
    await sender.run_batch()
    assert (await current(repo, brief)).wait_reason == CAP
    await clock.advance(31 * 60)
    assert (await current(repo, brief)).status is MessageStatus.EXPIRED
    await clock.advance(3600)
    await sender.run_batch()
    assert [r.content for r in sms.requests] == ["first"]


class UnreachableCaps(ProbedRepository):
    """The database answers the claim, then not the cap's admission."""

    async def admit_capped(
        self, candidates: Sequence[tuple[int, str]], limit: int, window_s: float
    ) -> dict[int, datetime | None]:
        raise RepositoryUnavailable("the test made the database unavailable")


async def test_when_the_cap_cannot_be_counted_nothing_is_sent_and_nothing_lost(
    sms: InMemorySmsClient, clock: FakeClock
) -> None:
    repo = UnreachableCaps(clock)
    try:
        sale = commercial(repo, clock, "sale")[0]
        code = repo.add(PHONE, "code", created_at=clock.now() - timedelta(minutes=1))
        with pytest.raises(RepositoryUnavailable):
            await capped(repo, sms, clock, "3/24h").run_batch()
        assert sms.requests == []  # the transactional one waits for the batch too
        for message in (sale, code):
            back = await current(repo, message)
            assert (back.status, back.attempts, back.cap_admitted_at) == (MessageStatus.PENDING, 0, None)
    finally:
        await repo.close()


class HoursStandIn:
    """A gate before the cap that holds one message back, as the sending hours would."""

    def __init__(self, content: str) -> None:
        self.content = content

    async def judge(self, messages: Sequence[Message], now: datetime) -> dict[int, Verdict]:
        return {
            m.id: Wait(now + timedelta(hours=8), "sending-hours", "night")
            for m in messages
            if m.content == self.content
        }


async def test_a_message_an_earlier_gate_holds_back_takes_no_place_under_the_cap(
    repo: ProbedRepository, sms: InMemorySmsClient, clock: FakeClock
) -> None:
    limit = parse_frequency_cap("1/24h")
    assert limit is not None
    gates: list[Gate] = [HoursStandIn("night"), CapGate(repo, limit)]
    sender = BatchSender(repo, sms, None, clock, SenderOptions(batch_size=10), gates=gates)
    night, _ = commercial(repo, clock, "night", "day")
    report = await sender.run_batch()
    assert [r.content for r in sms.requests] == ["day"]
    assert (report.sent, report.deferred) == (1, 1)
    held = await current(repo, night)
    assert (held.wait_reason, held.cap_admitted_at) == ("sending-hours", None)


# --- through the API -----------------------------------------------------------------------------


async def test_the_api_shows_why_and_until_when_a_message_waits() -> None:
    async with open_api(commercial_cap="2/1h") as api:
        items = [{"to": PHONE, "content": f"sale {i}", "category": "commercial"} for i in range(3)]
        status, body = await api.post("/api/v1/messages/batch", {"messages": items})
        assert status == 201, body
        started = api.clock.now()
        await api.run_once()
        _, third = await api.get(f"/api/v1/messages/{body['data'][2]['id']}")
        assert (third["status"], third["waitReason"]) == ("pending", "cap")
        assert datetime.fromisoformat(third["waitingUntil"]) == started + timedelta(hours=1)
        _, events = await api.get(f"/api/v1/messages/{third['id']}/events")
        [deferred] = events["data"]
        assert deferred["outcome"] == "deferred" and deferred["error"].startswith(
            "2 commercial messages to this number within 1h: the next may go at "
        )
        _, sent = await api.get("/api/v1/messages", status="sent")
        assert sorted(m["content"] for m in sent["data"]) == ["sale 0", "sale 1"]
        assert all(m["waitReason"] is None and m["waitingUntil"] is None for m in sent["data"])
        _, stats = await api.get("/api/v1/stats")
        assert stats["waiting"]["cap"] == 1
        metrics = await api.client.get("/metrics")
        text = await metrics.text()
        assert 'insider_messages_waiting{reason="cap"} 1.0' in text
        assert 'insider_cap_holds_total{action="wait"} 1.0' in text
        assert 'insider_send_attempts_total{outcome="deferred"} 1.0' in text
