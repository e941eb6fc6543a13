"""The suppression list with the service and the simulated provider as subprocesses, on SQLite and on
PostgreSQL: a number suppressed over HTTP after its commercial message was scheduled never gets it
(the provider never sees it; it ends suppressed, with the reason); and the command line's import and
export of the list as CSV, round trip."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.acceptance.conftest import Service, service_env, start_simulator, stop_gracefully
from tests.conftest import eventually

PHONE = "+905301234001"
OTHER = "+905301234002"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'insider.db'}"
    url: str = request.getfixturevalue("fresh_postgres_url")
    return url


async def test_a_number_suppressed_after_its_message_was_scheduled_never_gets_it(
    database_url: str, start_service: Any
) -> None:
    async with aiohttp.ClientSession() as session:
        simulator = await start_simulator(start_service, session)
        service: Service = start_service(
            database_url=database_url,
            webhook_url=simulator.base_url + "/webhook",
            send_interval="0.2s",
            default_region="TR",
        )
        await service.wait_answering(session)
        api = service.base_url + "/api/v1"

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with session.request(method, api + path, json=body) as response:
                return response.status, (await response.json() if response.status != 204 else None)

        send_at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
        scheduled = {"sendAt": send_at, "category": "commercial"}
        status, sale = await call("POST", "/messages", {"to": PHONE, "content": "Kampanya: %20 indirim", **scheduled})
        assert (status, sale["status"]) == (201, "pending")
        _, code = await call("POST", "/messages", {"to": PHONE, "content": "Kodunuz 4711", "sendAt": send_at})
        _, other = await call("POST", "/messages", {"to": OTHER, "content": "Kampanya (diğer)", **scheduled})

        status, entry = await call(
            "POST", "/suppressions", {"to": "0530 123 40 01", "scope": "commercial", "reason": "asked by phone"}
        )
        assert (status, entry["to"], entry["source"]) == (201, PHONE, "api")

        item: dict[str, Any] = {}

        async def ended() -> bool:
            item.update((await call("GET", f"/messages/{sale['id']}"))[1])
            return bool(item["status"] != "pending")

        await eventually(ended, timeout_s=20, what="the scheduled sale's time")
        assert (item["status"], item["suppressionReason"], item["sentAt"]) == ("suppressed", "asked by phone", None)

        async def others_sent() -> bool:
            statuses = [(await call("GET", f"/messages/{m['id']}"))[1]["status"] for m in (code, other)]
            return statuses == ["sent", "sent"]

        await eventually(others_sent, timeout_s=20, what="the code and the other number's sale to be sent")
        async with session.get(simulator.base_url + "/messages") as response:
            received = (await response.json())["data"]
        assert sorted((m["to"], m["content"]) for m in received) == [
            (PHONE, "Kodunuz 4711"),
            (OTHER, "Kampanya (diğer)"),
        ]
        _, history = await call("GET", f"/messages/{sale['id']}/events")
        assert [(e["outcome"], e["error"]) for e in history["data"]] == [("suppressed", "suppressed: asked by phone")]
        # Queued now, it is stored suppressed at once; the list shows the number.
        _, now = await call("POST", "/messages", {"to": PHONE, "content": "Son gün!", "category": "commercial"})
        assert (now["status"], now["suppressionReason"]) == ("suppressed", "asked by phone")
        _, listed = await call("GET", "/suppressions")
        assert [(s["to"], s["scope"], s["reason"]) for s in listed["data"]] == [(PHONE, "commercial", "asked by phone")]

        async def counted() -> bool:
            stats = (await call("GET", "/stats"))[1]
            return bool(stats["counts"]["suppressed"] == 2)

        await eventually(counted, timeout_s=10, what="the stats to count both")
        async with session.get(service.base_url + "/metrics") as response:
            assert "insider_suppressions 1.0" in (await response.text()).splitlines()
        assert (await call("GET", "/suppressions/%2B905301234001"))[0] == 200
        assert (await call("DELETE", "/suppressions/%2B905301234001"))[0] == 204
        assert (await call("DELETE", "/suppressions/%2B905301234001"))[0] == 404
        stop_gracefully([service, simulator])
    log = service.log()
    assert PHONE not in log and PHONE[1:] not in log  # masked in the logs, in a route's path too
    assert "/api/v1/suppressions/+905*******01" in log


def cli(*args: str, cwd: Path, stdin: str | None = None, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "insider", "suppressions", *args],
        cwd=cwd,
        env=service_env(**settings),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_import_and_export_round_trip(database_url: str, tmp_path: Path) -> None:
    source = tmp_path / "opt-outs.csv"
    source.write_text(
        "to,scope,reason\n"
        "+905301234001,,\n"
        "0530 123 40 02,commercial,asked by phone\n"
        "hello,all,x\n"
        '+905301234003,all,"two\nlines"\n'
        "+905301234004,marketing,\n"
        "+905301234005,all,İYS ret\n",
        encoding="utf-8",
    )
    first = cli("import", str(source), cwd=tmp_path, database_url=database_url, default_region="TR")
    assert first.returncode == 1, first.stderr  # some lines were rejected
    assert first.stdout.splitlines() == [
        "rejected line 4: to is not a possible phone number: not a phone number",
        "rejected line 5: reason must be one line of text, without control characters",
        "rejected line 7: scope must be all or commercial",
        "stored 3 numbers (3 added, 0 updated), rejected 3 lines",
    ]
    exported = cli("export", cwd=tmp_path, database_url=database_url)
    assert exported.returncode == 0, exported.stderr
    lines = exported.stdout.splitlines()
    assert lines[0] == "to,scope,reason,source,createdAt"
    assert sorted(line.rsplit(",", 1)[0] for line in lines[1:]) == [
        "+905301234001,all,opt-out,import",
        "+905301234002,commercial,asked by phone,import",
        "+905301234005,all,İYS ret,import",
    ]
    assert exported.stderr.strip().endswith("insider: exported 3 numbers")

    # Into another database from standard input: the same list, each entry's time kept.
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    again = cli("import", "-", cwd=tmp_path, stdin=exported.stdout, database_url=elsewhere)
    assert (again.returncode, again.stdout) == (0, "stored 3 numbers (3 added, 0 updated), rejected 0 lines\n")
    copy = tmp_path / "copy.csv"
    assert cli("export", str(copy), cwd=tmp_path, database_url=elsewhere).returncode == 0
    assert copy.read_text(encoding="utf-8") == exported.stdout

    # Imported once more, the same lines change nothing but are counted as updated.
    twice = cli("import", str(copy), cwd=tmp_path, database_url=database_url)
    assert twice.stdout.splitlines()[-1] == "stored 3 numbers (0 added, 3 updated), rejected 0 lines"


def test_a_file_without_the_to_column_stores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("phone,reason\n+905301234001,x\n", encoding="utf-8")
    result = cli("import", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"insider: error: {path}: the CSV header must name the columns to[,scope,reason,source,createdAt]; "
        "got phone,reason"
    )
    missing = cli("import", str(tmp_path / "nowhere.csv"), cwd=tmp_path)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    assert cli(cwd=tmp_path).returncode == 2  # no action: a usage error
