"""What the handlers use: the objects of one app's own container, reached through that app."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from insider.config import Settings
from insider.metrics import CountsCache, Metrics
from insider.ports import Clock, MessageRepository, SentCache
from insider.providers.dispatch import Dispatcher
from insider.providers.switches import ProviderSwitches
from insider.receipt_writer import ReceiptWriter
from insider.replies import Replies
from insider.sending_hours import SendingHoursPolicy
from insider.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class Services:
    """What the handlers use: the objects of this app's own container, once its resources are open."""

    settings: Settings
    repository: MessageRepository
    cache: SentCache
    counts: CountsCache
    metrics: Metrics
    supervisor: Supervisor
    receipts: ReceiptWriter
    clock: Clock
    dispatcher: Dispatcher  # the providers, their routes and their state in this process
    switches: ProviderSwitches | None  # None: the repository keeps no provider switches
    sending_hours: SendingHoursPolicy | None = None  # INSIDER_SENDING_HOURS; None: any hour
    replies: Replies | None = None  # None: the repository keeps no replies


class AppServices:
    """Holds an app's Services while its lifespan runs.

    Each app reaches its own objects through ``request.app[SERVICES]``: nothing is patched
    process-wide, so two apps over two containers in one process never see each other's.
    The app is frozen before its lifespan opens the resources, so they are set here, in a
    holder put under the key when the app is made.
    """

    def __init__(self) -> None:
        self._services: Services | None = None

    def open(self, services: Services) -> None:
        self._services = services

    def close(self) -> None:
        self._services = None

    def get(self) -> Services:
        """The app's services; a JSON 503 while the app is not (or no longer) running."""
        if self._services is None:
            raise web.HTTPServiceUnavailable(
                text='{"error": "the service is not running"}', content_type="application/json"
            )
        return self._services


SERVICES = web.AppKey("services", AppServices)


def services(request: web.Request) -> Services:
    """The objects of the app that received ``request``."""
    return request.app[SERVICES].get()
