"""The sender task runs in a context of its own, whatever context started it."""

from __future__ import annotations

import structlog
from structlog.testing import capture_logs

from insider.adapters.memory import InMemorySmsClient
from insider.clock import FakeClock
from insider.sender import BatchSender, SenderOptions
from insider.supervisor import Supervisor
from tests.unit.support import ProbedRepository


async def test_sender_logs_do_not_inherit_the_starting_requests_context(
    clock: FakeClock, repo: ProbedRepository, sms: InMemorySmsClient
) -> None:
    repo.add("+905301234001", "hello")
    supervisor = Supervisor(BatchSender(repo, sms, None, clock, SenderOptions()), repo, interval_s=60, clock=clock)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        with structlog.contextvars.bound_contextvars(request_id="the-start-request"):
            await supervisor.start()
        await clock.settle()
        await supervisor.stop()
    sends = [entry for entry in logs if entry["event"] == "send"]
    assert sends and all("request_id" not in entry for entry in sends)
