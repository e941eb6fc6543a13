"""Two embedded services in one process, from two production containers on two SQLite files."""

from __future__ import annotations

from pathlib import Path

import pytest

from insider import load_settings
from insider.adapters.memory import InMemorySmsClient
from insider.container import Container, open_service, resolve
from insider.domain import MessageStatus
from insider.ports import RepositoryUnavailable


def container_on(path: Path, sms: InMemorySmsClient) -> Container:
    env = {
        "INSIDER_DATABASE_URL": f"sqlite:///{path}",
        "INSIDER_REDIS_URL": "",
        "INSIDER_WEBHOOK_URL": "",
        "INSIDER_SEND_INTERVAL": "1h",
        "INSIDER_AUTOSTART": "false",
    }
    container = Container(settings=load_settings(env, env_file=None))
    container.sms_client.override(sms)
    return container


async def test_two_open_services_keep_to_their_own_database_and_supervisor(tmp_path: Path) -> None:
    first_sms, second_sms = InMemorySmsClient(), InMemorySmsClient()
    first, second = container_on(tmp_path / "first.db", first_sms), container_on(tmp_path / "second.db", second_sms)
    async with open_service(first) as first_supervisor:
        first_repository = await resolve(first.repository)
        async with open_service(second) as second_supervisor:
            second_repository = await resolve(second.repository)
            assert first_supervisor is not second_supervisor and first_repository is not second_repository
            await first_repository.enqueue("+15555550100", "first")
            await second_repository.enqueue("+15555550101", "second")

            report = await second_supervisor.run_once()

            assert report.sent == 1
            assert [r.content for r in second_sms.requests] == ["second"] and first_sms.requests == []
            assert (await first_repository.counts())[MessageStatus.PENDING] == 1
        # The second is closed: its database with it. The first goes on.
        with pytest.raises(RepositoryUnavailable):
            await second_repository.counts()
        report = await first_supervisor.run_once()
        assert report.sent == 1
        assert [r.content for r in first_sms.requests] == ["first"]
        assert (await first_repository.counts())[MessageStatus.SENT] == 1
        assert (await first_supervisor.start()).changed
        assert (await first_supervisor.stop()).changed
