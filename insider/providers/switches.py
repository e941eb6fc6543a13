"""An operator's switch on each provider: out of rotation and back, for the whole deployment, kept across restarts."""

from __future__ import annotations

from typing import Final

from insider.logs import get_logger
from insider.ports import Clock, ProviderStore, RepositoryUnavailable
from insider.providers.dispatch import Dispatcher

log = get_logger("insider.providers")

# How often each process reads the switches another process may have turned.
FOLLOW_EVERY_S: Final = 2.0


class UnknownProvider(LookupError):
    """No provider of that name is configured."""


class ProviderSwitches:
    """Turns providers off and on in the database and follows what other processes turned.

    :meth:`switch` takes effect at once in this process and within :data:`FOLLOW_EVERY_S` in
    the others, which :meth:`run` (a long-lived child of the supervisor) keeps up to date. A
    provider nobody switched is on.
    """

    def __init__(self, store: ProviderStore, dispatcher: Dispatcher, clock: Clock) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._clock = clock

    async def switch(self, name: str, enabled: bool) -> None:
        """Take ``name`` out of rotation (False) or put it back (True).

        Raises UnknownProvider, or RepositoryUnavailable.
        """
        provider = self._dispatcher.providers.get(name)
        if provider is None:
            raise UnknownProvider(name)
        await self._store.switch_provider(name, enabled)
        provider.enabled = enabled
        log.info("provider switched", provider=name, enabled=enabled)

    async def follow_once(self) -> None:
        switches = await self._store.provider_switches()
        for name, provider in self._dispatcher.providers.items():
            provider.enabled = switches.get(name, True)

    async def run(self) -> None:
        """Read the switches every :data:`FOLLOW_EVERY_S`, until cancelled (one line per database outage)."""
        failing = False
        while True:
            try:
                await self.follow_once()
                failing = False
            except RepositoryUnavailable as exc:
                if not failing:
                    log.warning("provider switches not read: database unavailable", error=str(exc))
                failing = True
            await self._clock.sleep(FOLLOW_EVERY_S)
