"""What the processes of one deployment share about each provider, kept in the database.

- An operator's switch: out of rotation and back, kept across restarts.
- A pause a provider asked for (a 429, ``Retry-After``, ``ESME_RTHROTTLED``): the process it
  answered pauses at once, and tells the others, which pause for what is left of it.
- Its ``concurrency``, when the providers file sets it: split between the processes alive
  (each says so every :data:`FOLLOW_EVERY_S`), the shares adding up to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from typing import Final

from insider.logs import get_logger
from insider.ports import Clock, ProviderStore, RepositoryUnavailable
from insider.providers.dispatch import Dispatcher

log = get_logger("insider.providers")

# How often each process reads what the others changed, and says it is alive.
FOLLOW_EVERY_S: Final = 2.0
# A process not heard from for this long is gone: its share goes to the others.
MEMBER_TTL_S: Final = 3 * FOLLOW_EVERY_S
# A process that joins is counted in the split once it is this old: by then every other process
# has counted it (each counts every FOLLOW_EVERY_S) ...
SETTLED_S: Final = FOLLOW_EVERY_S + 0.5
# ... and it takes its own share only once this old, when the others have already given theirs up.
OWN_SHARE_AFTER_S: Final = SETTLED_S + FOLLOW_EVERY_S
# How long a stopping process tries to say it is gone (else the others wait out MEMBER_TTL_S).
LEAVE_TIMEOUT_S: Final = 0.5


class UnknownProvider(LookupError):
    """No provider of that name is configured."""


def my_share(concurrency: int, me: str, members: list[tuple[str, float]], *, holding: bool) -> int | None:
    """This process's share of ``concurrency``, from the processes alive and how long ago each joined.

    The processes settled (:data:`SETTLED_S`: every process has counted them by then), and this
    one when it is ``holding`` a share already, split it, each a share by its rank. A process
    that joins where others send has none yet (None: its sends wait) until
    :data:`OWN_SHARE_AFTER_S`, by when the others have given theirs up, so the shares never add
    up to more than ``concurrency`` (requests already in flight when a share shrinks finish).
    Alone, a process takes it all at once. A share of 0 (more processes than ``concurrency``)
    is final: the provider is passed over here.
    """
    if all(member == me for member, _ in members):
        return concurrency
    my_age_s = next((age_s for member, age_s in members if member == me), 0.0)
    if not holding and my_age_s < OWN_SHARE_AFTER_S:
        return None
    splitting = [member for member, age_s in members if age_s >= SETTLED_S or member == me]
    return share(concurrency, len(splitting), splitting.index(me))


def share(concurrency: int, members: int, rank: int) -> int:
    """This process's share of ``concurrency`` when ``members`` processes split it and it is the
    ``rank``-th of them (from 0): the shares of all of them add up to ``concurrency``."""
    members = max(1, members)
    return concurrency // members + (1 if rank < concurrency % members else 0)


class ProviderSwitches:
    """Turns providers off and on, and follows what the deployment's other processes changed.

    :meth:`switch` takes effect at once in this process and within :data:`FOLLOW_EVERY_S` in
    the others, which :meth:`run` (a long-lived child of the supervisor) keeps up to date. A
    provider nobody switched is on.
    """

    def __init__(self, store: ProviderStore, dispatcher: Dispatcher, clock: Clock) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._clock = clock
        self.member = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._told: dict[str, float] = {}  # each provider's pause this process last told the others (monotonic end)
        # Nothing goes out before the operators' switches are read (a provider disabled before a
        # restart stays off): the dispatcher waits for this, a moment at start-up.
        dispatcher.switches_read = asyncio.Event()
        for provider in dispatcher.providers.values():
            if provider.spec.shared_concurrency:  # nothing goes to it before this process knows its share
                provider.in_flight.resize(0)
                provider.share_counted = False

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

    async def read_once(self) -> None:
        """Follow once, unless that was done already: what an answer about the providers needs first."""
        event = self._dispatcher.switches_read
        if event is not None and not event.is_set():
            await self.follow_once()

    async def follow_once(self) -> None:
        """Tell the others the pauses this process was asked for, count the processes, and read
        the switches and pauses the others wrote."""
        now = self._clock.monotonic()
        for name, provider in self._dispatcher.providers.items():
            if provider.throttled_until > self._told.get(name, 0.0) and provider.throttled_until > now:
                await self._store.throttle_provider(name, provider.throttled_until - now)
                self._told[name] = provider.throttled_until
        members = await self._store.provider_members(self.member, MEMBER_TTL_S)
        for provider in self._dispatcher.providers.values():
            if provider.spec.shared_concurrency:
                mine = my_share(provider.spec.concurrency, self.member, members, holding=provider.share_counted)
                provider.in_flight.resize(mine or 0)
                provider.share_counted = mine is not None
        states = await self._store.provider_states()
        now = self._clock.monotonic()
        for name, provider in self._dispatcher.providers.items():
            state = states.get(name)
            provider.enabled = True if state is None else state.enabled
            if state is not None and state.throttled_s:
                until = now + state.throttled_s
                if until > provider.throttled_until + 0.05:  # another process's news (ours comes back as told)
                    provider.throttled_until = until
                    self._told[name] = until
                    log.info("provider paused by another process", provider=name, for_s=round(state.throttled_s, 3))
        if self._dispatcher.switches_read is not None:
            self._dispatcher.switches_read.set()

    async def run(self) -> None:
        """Follow every :data:`FOLLOW_EVERY_S`, until cancelled (one line per database outage); on
        the way out, say this process is gone so its share goes to the others at once."""
        failing = False
        try:
            while True:
                try:
                    await self.follow_once()
                    failing = False
                except RepositoryUnavailable as exc:
                    if not failing:
                        log.warning("providers' shared state not read: database unavailable", error=str(exc))
                    failing = True
                await self._clock.sleep(FOLLOW_EVERY_S)
        except asyncio.CancelledError:
            with contextlib.suppress(RepositoryUnavailable, TimeoutError):
                async with asyncio.timeout(LEAVE_TIMEOUT_S):
                    await self._store.provider_member_gone(self.member)
            raise
