"""Replies taken in: stored, their opt-out or opt-in keyword acted on, a confirmation queued, counted and logged."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from insider.config import Settings
from insider.domain import MAX_PRIORITY, Category, NewMessage, mask_phone
from insider.inbound import Inbound, InvalidInbound, parse_inbound
from insider.keywords import Action, Keywords
from insider.logs import get_logger
from insider.ports import InboundStore, RecordedReply, ReplyPage

log = get_logger("insider.inbound")


class ReplyObserver(Protocol):
    """What is told of each reply taken; :class:`insider.metrics.Metrics` is one."""

    def reply_received(self, action: str | None) -> None: ...


class Replies:
    """Takes replies (from ``POST /api/v1/inbound`` and SMPP providers) into ``store``.

    A reply that is an opt-out keyword suppresses its sender (for ``opt_out_scope``), an
    opt-in keyword lifts the sender's suppression; either is confirmed with its text (if any)
    as a transactional message that no suppression holds back. All of it in one transaction.
    """

    def __init__(
        self,
        store: InboundStore,
        keywords: Keywords,
        *,
        opt_out_scope: str = "all",
        opt_out_reply: str = "",
        opt_in_reply: str = "",
        observer: ReplyObserver | None = None,
    ) -> None:
        self._store = store
        self.keywords = keywords
        self._scope = opt_out_scope
        self._confirmations = {Action.OPT_OUT: opt_out_reply, Action.OPT_IN: opt_in_reply}
        self._observer = observer

    @classmethod
    def for_settings(cls, store: InboundStore, settings: Settings, observer: ReplyObserver | None = None) -> Replies:
        """Replies as the INSIDER_OPT_* settings say."""
        return cls(
            store,
            Keywords(settings.opt_out_keywords, settings.opt_in_keywords),
            opt_out_scope=settings.opt_out_scope,
            opt_out_reply=settings.opt_out_reply,
            opt_in_reply=settings.opt_in_reply,
            observer=observer,
        )

    async def list(self, limit: int, cursor: str | None = None, from_phone: str | None = None) -> ReplyPage:
        """A page of replies, newest first (see :meth:`InboundStore.list_inbound`)."""
        return await self._store.list_inbound(limit, cursor, from_phone)

    async def receive(self, inbound: Inbound) -> RecordedReply:
        """Store ``inbound`` and do what it asks; the same provider id again is the reply stored before.

        Raises RepositoryUnavailable (nothing was stored: the provider should send it again).
        """
        action = self.keywords.action(inbound.text)
        text = self._confirmations[action] if action is not None else ""
        confirmation = None
        if text:  # an answer to what the sender just wrote: at once, first in the queue, at any hour
            confirmation = NewMessage.of(
                inbound.from_phone,
                text,
                priority=MAX_PRIORITY,
                category=Category.TRANSACTIONAL,
                respect_sending_hours=False,
                consent_reply=True,
            )
        recorded = await self._store.record_inbound(inbound, action, self._scope, confirmation)
        reply = recorded.reply
        log.info(
            "reply received" if not recorded.replayed else "reply received again (the same provider id): not acted on",
            reply_id=reply.id,
            sender=mask_phone(reply.from_phone),
            to=mask_phone(reply.to_phone),
            provider=reply.provider,
            provider_message_id=reply.provider_message_id,
            action=reply.action,
            scope=self._scope if reply.action == Action.OPT_OUT else None,
            confirmation=confirmation is not None and not recorded.replayed,
            length=len(reply.text),
        )
        if not recorded.replayed and self._observer is not None:
            self._observer.reply_received(reply.action)
        return recorded


def bind_inbound(provider: str, replies: Replies, region: str) -> Callable[[dict[str, Any]], Awaitable[None]]:
    """The inbound callback of ``provider``'s SMPP bind: a handset's reply ``{"from", "to", "text"}``, named as
    the provider's, to ``replies``.

    A sender without its ``+`` (an SMSC that does not say its number is international) is read
    in ``region``, else as an international number's digits. One that cannot be taken (a sender
    that is no phone number) is logged and dropped; a database that is down raises (the bind
    hands it again, with backoff).
    """

    async def take(message: dict[str, Any]) -> None:
        try:
            try:
                inbound = parse_inbound(message, region, provider=provider)
            except InvalidInbound:
                sender = message.get("from")
                if not (isinstance(sender, str) and sender.isdigit()):
                    raise
                inbound = parse_inbound(message | {"from": "+" + sender}, region, provider=provider)
        except InvalidInbound as exc:
            log.warning(
                "SMPP reply that cannot be taken; acknowledged and dropped",
                provider=provider,
                sender=mask_phone(str(message.get("from", ""))),
                problems=exc.fields,
            )
            return
        await replies.receive(inbound)

    return take
