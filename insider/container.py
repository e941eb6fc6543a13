"""The composition root: every adapter, pool and client is made here, once."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import redis.asyncio as aioredis
from dependency_injector import containers, providers
from psycopg_pool import AsyncConnectionPool

from insider.adapters.memory import InMemorySentCache
from insider.adapters.postgres import PostgresMessageRepository, open_postgres_pool
from insider.adapters.redis import RedisSentCache, open_redis
from insider.adapters.sqlite import SqliteDatabase, SqliteMessageRepository, is_sqlite_url, open_sqlite
from insider.adapters.webhook import WebhookSmsClient, open_http_session
from insider.caps import CapGate
from insider.clock import SystemClock
from insider.config import Settings, mask_url
from insider.consent import Gate
from insider.logs import get_logger
from insider.metrics import CountsCache, Metrics
from insider.ports import (
    CapStore,
    Clock,
    InboundStore,
    MessageRepository,
    ProviderStore,
    ReceiptStore,
    RepositoryUnavailable,
    SmsClient,
)
from insider.providers.config import ProvidersConfig, ProviderSpec, RouteSpec
from insider.providers.dispatch import RATE_HOLD_S, Dispatcher, runtime
from insider.providers.routing import Router
from insider.providers.switches import ProviderSwitches
from insider.receipt_parsing import parse_receipts
from insider.receipt_upkeep import ReceiptUpkeep
from insider.receipt_writer import MAX_WRITERS, ReceiptWriter
from insider.replies import Replies, bind_inbound
from insider.sender import BatchSender, SenderOptions
from insider.sending_hours import SendingHoursGate, SendingHoursPolicy
from insider.simulator import ReceiptReporter, SimulatedSmsClient
from insider.supervisor import Child, Supervisor

T = TypeVar("T")
log = get_logger("insider")


# How long a call waits for a pooled PostgreSQL connection before it answers "unavailable":
# short, so that the API and /readyz answer 503 within a second while the database is
# down. One-shot commands (migrate, enqueue) wait longer for a slow first connection.
SERVICE_DATABASE_WAIT_S = 0.5
COMMAND_DATABASE_WAIT_S = 5.0


async def _postgres_pool(settings: Settings, wait_s: float) -> AsyncIterator[AsyncConnectionPool | None]:
    if is_sqlite_url(settings.database_url):  # SQLite configured: no pool is opened
        yield None
        return
    async with open_postgres_pool(
        settings.database_url,
        timeout_s=wait_s,
        statement_timeout_s=settings.database_statement_timeout_s,
        keepalives_idle_s=settings.database_keepalives_idle_s,
        keepalives_interval_s=settings.database_keepalives_interval_s,
        keepalives_count=settings.database_keepalives_count,
    ) as pool:
        yield pool


async def _sqlite_database(url: str) -> AsyncIterator[SqliteDatabase | None]:
    if not is_sqlite_url(url):  # PostgreSQL configured
        yield None
        return
    async with open_sqlite(url) as database:
        yield database


async def _webhook_http(url: str, concurrency_limit: int) -> AsyncIterator[aiohttp.ClientSession | None]:
    if not url:  # no webhook configured: the simulated provider needs no HTTP client
        yield None
        return
    async with open_http_session(concurrency_limit=concurrency_limit) as session:
        yield session


async def _redis(url: str) -> AsyncIterator[aioredis.Redis | None]:
    if not url:  # no Redis configured: the in-process cache is used instead
        log.info("cache in use", cache="in-process", hint="set INSIDER_REDIS_URL to use Redis")
        yield None
        return
    log.info("cache in use", cache="redis", url=mask_url(url))
    async with open_redis(url) as client:
        yield client


def _cache_kind(settings: Settings) -> str:
    return "redis" if settings.redis_url else "memory"


def _database_kind(settings: Settings) -> str:
    return "sqlite" if is_sqlite_url(settings.database_url) else "postgres"


def _provider_kind(settings: Settings) -> str:
    return "webhook" if settings.webhook_url else "simulator"


def _providers_config(settings: Settings) -> ProvidersConfig:
    """The providers and routes: the providers file's, or the one provider of the shorthand."""
    if settings.providers is not None:
        if settings.webhook_url:
            log.warning(
                "INSIDER_PROVIDERS_FILE is set: its providers are used, and INSIDER_WEBHOOK_URL is not",
                providers_file=settings.providers_file,
            )
        return settings.providers
    name = _provider_kind(settings)
    spec = ProviderSpec(
        name=name,
        kind=name,
        timeout_s=settings.webhook_timeout_s,
        concurrency=settings.send_concurrency,
        url=settings.webhook_url,
        auth_key=settings.webhook_auth_key,
    )
    return ProvidersConfig((spec,), (RouteSpec("default", (name,)),), "INSIDER_WEBHOOK_URL")


def _providers_source(settings: Settings) -> str:
    return "file" if settings.providers is not None else "shorthand"


def _shorthand_client(config: ProvidersConfig, client: SmsClient) -> dict[str, SmsClient]:
    """The one provider of INSIDER_WEBHOOK_URL (or the simulated one), by its name."""
    return {config.providers[0].name: client}


def _provider_names(config: ProvidersConfig) -> frozenset[str]:
    return frozenset(spec.name for spec in config.providers)


def _several_providers(config: ProvidersConfig) -> bool:
    return len(config.providers) > 1


def bind_receipts(
    provider: str, receipts: ReceiptWriter, clock: Clock
) -> Callable[[list[dict[str, Any]]], Awaitable[None]]:
    """The receipts callback of ``provider``'s SMPP bind: its receipts, named as its own, to the receipt writer."""

    async def apply(batch: list[dict[str, Any]]) -> None:
        await receipts.submit(parse_receipts(batch, clock.now(), provider=provider))

    return apply


def _replies(repository: object, settings: Settings, metrics: Metrics) -> Replies | None:
    """Replies to the repository, when it keeps them (an embedding program may bring one that does not)."""
    return Replies.for_settings(repository, settings, metrics) if isinstance(repository, InboundStore) else None


async def _file_clients(
    config: ProvidersConfig, receipts: ReceiptWriter, clock: Clock, replies: Replies | None, region: str
) -> AsyncIterator[dict[str, SmsClient]]:
    """Each provider of the file's client: an HTTP session each for the webhooks (closed on exit),
    an SMPP bind each (which the supervisor runs), whose receipts and replies name it."""
    async with AsyncExitStack() as opened:
        clients: dict[str, SmsClient] = {}
        for spec in config.providers:
            if spec.kind == "smpp":
                from insider.adapters.smpp import SmppSmsClient  # smpp34 starts threads of its own when imported

                clients[spec.name] = SmppSmsClient(
                    spec.name,
                    spec.host,
                    spec.port,
                    spec.system_id,
                    spec.password,
                    source=spec.source,
                    window=spec.window,
                    timeout_s=spec.timeout_s,
                    receipts=bind_receipts(spec.name, receipts, clock),
                    inbound=bind_inbound(spec.name, replies, region) if replies is not None else None,
                    system_type=spec.system_type,
                    clock=clock,
                )
            else:
                session = await opened.enter_async_context(open_http_session(concurrency_limit=spec.concurrency))
                clients[spec.name] = WebhookSmsClient(session, spec.url, spec.auth_key, spec.timeout_s)
        yield clients


def _dispatcher(
    config: ProvidersConfig,
    clients: dict[str, SmsClient],
    clock: Clock,
    repository: object,
    send_interval_s: float,
    metrics: Metrics,
) -> Dispatcher:
    """The providers as the sender sends through them: breakers for the file's (the shorthand keeps
    today's retries), each one's rate kept in the database when it has one, each request in the metrics."""
    breakers = config.source != "INSIDER_WEBHOOK_URL"
    runtimes = [runtime(spec, clients[spec.name], clock, breaker=breakers) for spec in config.providers]
    rates = repository if isinstance(repository, ProviderStore) else None
    # A batch every interval may hold for a rate turn up to that interval (the next batch would
    # come no sooner); back to back (drain mode), only a moment.
    hold_s = max(RATE_HOLD_S, send_interval_s)
    metrics.providers_configured(spec.name for spec in config.providers)
    router = Router(config.routes, config.providers)
    return Dispatcher(runtimes, router, clock, rates=rates, rate_hold_s=hold_s, observer=metrics)


def _simulated_sms_client(
    sleep: Callable[[float], Awaitable[None]], reporter: ReceiptReporter | None
) -> SimulatedSmsClient:
    log.warning(
        "INSIDER_WEBHOOK_URL is not set: messages go to the built-in simulated provider; "
        "NOTHING LEAVES THIS MACHINE and no SMS is delivered",
        provider="simulator",
    )
    return SimulatedSmsClient(sleep=sleep, reporter=reporter)


def _simulated_receipts(kind: str, receipts: ReceiptWriter, clock: Clock) -> ReceiptReporter | None:
    """The built-in provider's receipts, straight to the receipt writer (no HTTP, no token).

    It reports as one of the supervisor's children (see :func:`_children`).
    """
    if kind != "simulator":
        return None

    async def apply(batch: list[dict[str, Any]]) -> None:
        received_at = clock.now()
        await receipts.submit(parse_receipts(batch, received_at))

    return ReceiptReporter(apply, clock=clock)


# At shutdown the receipt writer's lanes write what is queued within this, then are cancelled
# (what is left is answered 503, and the provider sends it again): within the stop's margin.
WRITER_CLOSE_S = 3.0
# The upkeep's passes are short, bounded statements: cancelled at once, given this to end.
UPKEEP_CLOSE_S = 1.0
# The simulated provider's receipts not yet due are dropped at shutdown; its task ends at once.
REPORTER_CLOSE_S = 0.5
# An SMPP bind is asked to unbind (its messages in flight answered first), within this.
BIND_CLOSE_S = 3.0


def _children(
    repository: object,
    writer: ReceiptWriter,
    upkeep: ReceiptUpkeep,
    reporter: ReceiptReporter | None,
    clients: dict[str, SmsClient],
    switches: ProviderSwitches | None,
) -> list[Child]:
    """The supervisor's long-lived children in the service, each closed with a deadline of its own."""
    children = []
    if isinstance(repository, ReceiptStore):  # receipts need a SQL repository (an embedding program may bring another)
        children += [
            Child(f"receipt-writer-{lane}", writer.run_lane, WRITER_CLOSE_S, writer.finish, needs_schema=True)
            for lane in range(1, MAX_WRITERS + 1)
        ]
        children += [
            Child("receipt-upkeep", upkeep.run_waiting, close_timeout_s=UPKEEP_CLOSE_S, needs_schema=True),
            Child("event-retention", upkeep.run_retention, close_timeout_s=UPKEEP_CLOSE_S, needs_schema=True),
        ]
    if switches is not None:
        children.append(Child("provider-switches", switches.run, close_timeout_s=UPKEEP_CLOSE_S, needs_schema=True))
    for name, client in clients.items():
        run, finish = getattr(client, "run", None), getattr(client, "finish", None)
        if run is not None:  # a provider with a connection of its own to keep (an SMPP bind)
            children.append(Child(f"provider-{name}", run, close_timeout_s=BIND_CLOSE_S, finish=finish))
    if reporter is not None:
        children.append(Child("simulated-receipts", reporter.run, close_timeout_s=REPORTER_CLOSE_S))
    return children


def _consent_gates(
    settings: Settings,
    repository: object,
    clock: Clock,
    metrics: Metrics,
    sending_hours: SendingHoursPolicy | None = None,
) -> list[Gate]:
    """The consent gates a claimed message passes before it is sent, in order (insider.consent):
    sending hours first, so that a message waiting for its hours takes no place under a cap."""
    gates: list[Gate] = []
    if sending_hours is not None:
        gates.append(SendingHoursGate(sending_hours))
    # The frequency cap last, so that only a message about to be sent takes a place under it.
    if settings.commercial_cap is not None:
        if not isinstance(repository, CapStore):
            raise TypeError(f"INSIDER_COMMERCIAL_CAP needs a repository that keeps caps, not {type(repository)!r}")
        cap = CapGate(repository, settings.commercial_cap, settings.commercial_cap_action, held=metrics.cap_held)
        gates.append(cap)
    return gates


def _switches(repository: object, dispatcher: Dispatcher, clock: Clock) -> ProviderSwitches | None:
    return ProviderSwitches(repository, dispatcher, clock) if isinstance(repository, ProviderStore) else None


class Container(containers.DeclarativeContainer):
    """Wires settings to adapters, the sender and the supervisor.

    The settings choose the adapters: PostgreSQL or SQLite by the scheme of
    INSIDER_DATABASE_URL, Redis or an in-process cache by whether INSIDER_REDIS_URL is
    set, the webhook or the built-in simulated provider by whether INSIDER_WEBHOOK_URL
    is set. Async resources (the database pool or file, the webhook HTTP client, the Redis
    client) open in ``await container.init_resources()`` and close in ``await
    container.shutdown_resources()``; those of the adapters not chosen open nothing.
    Tests swap any adapter with ``container.<name>.override(...)``.
    """

    settings = providers.Dependency(instance_of=Settings)
    clock = providers.Singleton(SystemClock)

    database_wait_s = providers.Object(SERVICE_DATABASE_WAIT_S)
    database_pool = providers.Resource(_postgres_pool, settings=settings, wait_s=database_wait_s)
    sqlite_database = providers.Resource(_sqlite_database, url=settings.provided.database_url)
    providers_config = providers.Singleton(_providers_config, settings)
    # With one provider, an unnamed receipt is matched by its id alone, as it always was.
    several_providers = providers.Callable(_several_providers, providers_config)
    repository = providers.Selector(
        providers.Callable(_database_kind, settings),
        postgres=providers.Singleton(
            PostgresMessageRepository, pool=database_pool, several_providers=several_providers
        ),
        sqlite=providers.Singleton(
            SqliteMessageRepository, database=sqlite_database, clock=clock, several_providers=several_providers
        ),
    )

    redis_client = providers.Resource(_redis, url=settings.provided.redis_url)
    cache = providers.Selector(
        providers.Callable(_cache_kind, settings),
        redis=providers.Singleton(
            RedisSentCache,
            client=redis_client,
            prefix=settings.provided.redis_prefix,
            ttl_s=settings.provided.redis_ttl_s,
            sent_list=settings.provided.redis_list,
        ),
        memory=providers.Singleton(InMemorySentCache, ttl_s=settings.provided.redis_ttl_s, clock=clock),
    )

    # Metrics on a registry of this container's own; the web app serves them at /metrics.
    metrics = providers.Singleton(Metrics)

    # Delivery receipts: written in batches, looked up in the cache first; a receipt may name
    # one of the providers.
    receipts = providers.Singleton(
        ReceiptWriter,
        repository=repository,
        cache=cache,
        clock=clock,
        observer=metrics,
        providers=providers.Callable(_provider_names, providers_config),
    )
    receipt_upkeep = providers.Singleton(
        ReceiptUpkeep,
        repository=repository,
        clock=clock,
        retention_s=settings.provided.events_retention_s,
        observer=metrics,
    )
    simulated_receipts = providers.Singleton(
        _simulated_receipts, kind=providers.Callable(_provider_kind, settings), receipts=receipts, clock=clock
    )

    webhook_http = providers.Resource(
        _webhook_http,
        url=settings.provided.webhook_url,
        concurrency_limit=settings.provided.send_concurrency,
    )
    sms_client = providers.Selector(
        providers.Callable(_provider_kind, settings),
        webhook=providers.Singleton(
            WebhookSmsClient,
            session=webhook_http,
            url=settings.provided.webhook_url,
            auth_key=settings.provided.webhook_auth_key,
            timeout_s=settings.provided.webhook_timeout_s,
        ),
        simulator=providers.Singleton(_simulated_sms_client, sleep=clock.provided.sleep, reporter=simulated_receipts),
    )

    # Replies (POST /api/v1/inbound, SMPP): stored, their keywords acted on, in the metrics.
    replies = providers.Singleton(_replies, repository=repository, settings=settings, metrics=metrics)

    # Message counts for /metrics and the dashboard: one query per ttl_s, however many ask.
    counts = providers.Singleton(CountsCache, repository=repository, ttl_s=2.0, clock=clock)
    # INSIDER_SENDING_HOURS: one policy (and its cache of numbers' zones) for the API and the sender.
    sending_hours = providers.Singleton(SendingHoursPolicy.from_settings, settings)

    sender_options = providers.Singleton(
        SenderOptions,
        batch_size=settings.provided.batch_size,
        content_max_length=settings.provided.content_max_length,
        concurrency=settings.provided.send_concurrency,
        max_attempts=settings.provided.max_attempts,
        retry_backoff_s=settings.provided.retry_backoff_s,
        retry_backoff_max_s=settings.provided.retry_backoff_max_s,
        # The lease follows from these and from how many batches the supervisor runs side by
        # side (SenderOptions.lease_s_for).
        send_timeout_s=settings.provided.webhook_timeout_s,
        max_segments=settings.provided.max_segments,
        default_region=settings.provided.default_region,
        send_order=settings.provided.send_order,
        commercial_footer=settings.provided.commercial_footer,
    )
    provider_clients = providers.Selector(
        providers.Callable(_providers_source, settings),
        shorthand=providers.Singleton(_shorthand_client, config=providers_config, client=sms_client),
        file=providers.Resource(
            _file_clients,
            config=providers_config,
            receipts=receipts,
            clock=clock,
            replies=replies,
            region=settings.provided.default_region,
        ),
    )
    dispatcher = providers.Singleton(
        _dispatcher,
        config=providers_config,
        clients=provider_clients,
        clock=clock,
        repository=repository,
        send_interval_s=settings.provided.send_interval_s,
        metrics=metrics,
    )
    sender = providers.Singleton(
        BatchSender,
        repository=repository,
        sms_client=dispatcher,
        cache=cache,
        clock=clock,
        options=sender_options,
        observer=metrics,
        gates=providers.Callable(
            _consent_gates,
            settings=settings,
            repository=repository,
            clock=clock,
            metrics=metrics,
            sending_hours=sending_hours,
        ),
    )
    provider_switches = providers.Singleton(_switches, repository=repository, dispatcher=dispatcher, clock=clock)
    children = providers.Callable(
        _children,
        repository=repository,
        writer=receipts,
        upkeep=receipt_upkeep,
        reporter=simulated_receipts,
        clients=provider_clients,
        switches=provider_switches,
    )
    supervisor = providers.Singleton(
        Supervisor,
        sender=sender,
        repository=repository,
        interval_s=settings.provided.send_interval_s,
        clock=clock,
        observer=metrics,
        children=children,
    )


async def resolve(provider: Callable[[], T | Awaitable[T]]) -> T:
    """A provider's object; those built on async resources hand back an awaitable."""
    value = provider()
    if inspect.isawaitable(value):
        return await value
    return value


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


@asynccontextmanager
async def open_repository(container: Container) -> AsyncIterator[MessageRepository]:
    """The container's repository with only its own database resource opened, closed on exit.

    For one-shot commands (migrate, enqueue) that need the database and nothing else.
    """
    container.database_wait_s.override(COMMAND_DATABASE_WAIT_S)
    try:
        yield await resolve(container.repository)
    finally:
        await _maybe_await(container.shutdown_resources())
        container.database_wait_s.reset_override()


@asynccontextmanager
async def open_service(
    container: Container, *, autostart: bool | None = None, wait_for_schema: bool = True
) -> AsyncIterator[Supervisor]:
    """Open the container's resources, apply the schema, and start sending.

    Sending starts unless ``autostart`` (by default INSIDER_AUTOSTART) is false. A
    database that does not answer yet gets its schema from the supervisor as soon as it
    does (the sender waits for that before its first batch). With ``wait_for_schema``
    (the default) this first tries once, so that the repository is ready to use inside
    the block when the database answers; without it, nothing here waits for the
    database at all (the command line listens first, then waits).

    On the way out the supervisor is closed (in-flight sends get INSIDER_SHUTDOWN_TIMEOUT
    to finish and be recorded; the whole stop takes at most that plus
    ``insider.supervisor.STOP_MARGIN_S``), then every resource closes. This is the web
    app's lifespan, and what an embedding program uses to run the sender without it.
    """
    settings: Settings = container.settings()
    await _maybe_await(container.init_resources())
    try:
        supervisor = await resolve(container.supervisor)
        try:
            try:
                if wait_for_schema:
                    await supervisor.prepare()
            except RepositoryUnavailable:
                pass  # the supervisor logs it and tries again below
            # The supervisor's own task applies it once the database answers (a no-op when done).
            await supervisor.prepare_when_reachable()
            if settings.autostart if autostart is None else autostart:
                await supervisor.start()
            yield supervisor
        finally:
            await supervisor.close(grace_s=settings.shutdown_timeout_s)
    finally:
        await _maybe_await(container.shutdown_resources())
