"""The database's schema as the supervisor keeps it: applied once, never twice at once, retried while it is down."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from insider.children import ChildTask, Ended
from insider.logs import get_logger
from insider.ports import RepositoryUnavailable, Schema, SchemaUpgradeRefused

log = get_logger("insider.supervisor")

# While the schema could not be applied (the database was down at start-up), it is tried this often.
PREPARE_RETRY_S = 1.0
# An attempt holds nothing the supervisor must wait for: it is cancelled with this deadline.
ATTEMPT_CLOSE_S = 0.5

Spawn = Callable[[str, Coroutine[Any, Any, Any], Callable[[Ended], None], float], ChildTask]


class SchemaKeeper:
    """Applies the schema through attempts that are children of the supervisor; only the actor calls it.

    :meth:`after` runs a continuation with the outcome of the next attempt (None: applied),
    starting one unless one is under way, so two migrations never run at once whoever asks.
    :meth:`keep_trying` retries every :data:`PREPARE_RETRY_S` while the database is
    unavailable (one log line for the outage, one when it is back), and stops at an error
    someone must fix first. ``on_applied`` is told once it is applied.
    """

    def __init__(
        self,
        schema: Schema,
        spawn: Spawn,
        timer: Callable[[float, Callable[[], None]], ChildTask],
        on_applied: Callable[[], None],
    ) -> None:
        self._schema = schema
        self._spawn = spawn
        self._timer = timer
        self._on_applied = on_applied
        self.ready = False
        self._attempt: ChildTask | None = None
        self._retrying = False
        self._waiting: list[Callable[[BaseException | None], None]] = []
        self._down_logged = False

    def after(self, then: Callable[[BaseException | None], None]) -> None:
        """Call ``then`` with the outcome of the next attempt; start one if none is under way."""
        self._waiting.append(then)
        self._try()

    def keep_trying(self) -> None:
        """Try until the schema is applied (the database may be down at start-up)."""
        if not self.ready and not self._retrying:
            self._retrying = True
            self._try()

    def fail_waiting(self, error: BaseException) -> None:
        """Answer every continuation still waiting with ``error`` (the supervisor closes)."""
        waiting, self._waiting = self._waiting, []
        for then in waiting:
            then(error)

    def _try(self) -> None:
        if self.ready or self._attempt is not None:
            return
        self._attempt = self._spawn("schema", self._schema.migrate(), self._ended, ATTEMPT_CLOSE_S)

    def _ended(self, ended: Ended) -> None:
        self._attempt = None
        error = ended.error
        waiting, self._waiting = self._waiting, []
        if error is None:
            self.ready = True
            self._retrying = False
            if self._down_logged:
                log.info("schema applied; the database answers again")
            self._on_applied()
        for then in waiting:
            then(error)
        if error is None or not self._retrying:
            return
        if isinstance(error, RepositoryUnavailable):
            if not self._down_logged:
                log.error(
                    "database unavailable at start-up; the schema will be applied once it answers", error=str(error)
                )
                self._down_logged = True
            self._timer(PREPARE_RETRY_S, self._retry)
            return
        self._retrying = False
        if isinstance(error, SchemaUpgradeRefused):  # someone must fix the database first
            log.error("cannot upgrade the database; nothing will be sent until it is fixed", error=str(error))
        else:
            log.error("applying the schema failed", error=f"{type(error).__name__}: {error}", exc_info=error)

    def _retry(self) -> None:
        if self._retrying and not self.ready:
            self._try()
