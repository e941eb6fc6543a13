"""A reply as a provider forwards it (our JSON, Twilio's form, an SMPP deliver_sm), checked and normalised."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from insider.domain import InvalidPhone, normalize_phone, unstorable_text

# The longest reply taken: Twilio's limit on a message body (ten concatenated segments and more).
MAX_INBOUND_TEXT: Final = 1600
# A provider's id of the reply (Twilio's MessageSid is 34 characters).
MAX_PROVIDER_ID: Final = 128
# Our own number the reply was sent to, when it is no phone number: a short code or a sender name.
_SHORT_ADDRESS: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,19}")
# Twilio posts its fields under these names; ours are taken too.
TWILIO_FIELDS: Final = {"From": "from", "To": "to", "Body": "text", "MessageSid": "messageId"}


class InvalidInbound(ValueError):
    """A reply that cannot be taken; ``fields`` names each bad field (``from``, ``to``, ``text``, ``messageId``)."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        super().__init__("invalid reply: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in fields.items()))
        self.fields = fields


@dataclass(frozen=True, slots=True)
class Inbound:
    """A reply to store: ``from_phone`` in E.164; ``to_phone`` ours (E.164, a short code or a name), if known."""

    from_phone: str
    text: str
    to_phone: str | None = None
    provider: str | None = None  # the provider that forwarded it
    provider_message_id: str | None = None  # that provider's id of it (Twilio's MessageSid)


@dataclass(frozen=True, slots=True)
class Reply:
    """A stored reply: what came in, when, and what it asked for (``opt-out``, ``opt-in`` or None)."""

    id: int
    from_phone: str
    text: str
    received_at: datetime
    action: str | None = None
    to_phone: str | None = None
    provider: str | None = None
    provider_message_id: str | None = None


def _to_address(value: str, region: str) -> str:
    """Our number as E.164 when it is one; a short code or a sender name as given."""
    try:
        return normalize_phone(value, region)
    except InvalidPhone as exc:
        if value.startswith("+") or not _SHORT_ADDRESS.fullmatch(value):
            raise InvalidPhone(f"not a possible phone number, short code or sender name: {exc}") from None
        return value


def parse_inbound(body: Any, region: str = "", provider: str | None = None) -> Inbound:
    """A reply from a JSON body ``{"from", "to"?, "text", "messageId"?}`` (fields not named here are ignored).

    ``from`` must be a possible phone number (a national form in ``region``); ``text`` at
    most :data:`MAX_INBOUND_TEXT` characters, any of them (an empty one too: a picture alone).
    Raises InvalidInbound naming every bad field.
    """
    if not isinstance(body, Mapping):
        raise InvalidInbound({"_schema": ['the body must be a JSON object {"from", "to"?, "text"}']})
    problems: dict[str, list[str]] = {}
    sender = _string(body, "from", problems, required=True)
    text = _string(body, "text", problems, required=True)
    to = _string(body, "to", problems, required=False)
    provider_id = _string(body, "messageId", problems, required=False)
    from_phone = to_phone = None
    if sender is not None:
        try:
            from_phone = normalize_phone(sender, region)
        except InvalidPhone as exc:
            problems["from"] = [f"not a possible phone number: {exc}"]
    if to:
        try:
            to_phone = _to_address(to.strip(), region)
        except InvalidPhone as exc:
            problems["to"] = [str(exc)]
    if text is not None and len(text) > MAX_INBOUND_TEXT:
        problems["text"] = [f"at most {MAX_INBOUND_TEXT} characters, got {len(text)}"]
    if provider_id is not None and not provider_id.strip():
        provider_id = None
    elif provider_id is not None and len(provider_id) > MAX_PROVIDER_ID:
        problems["messageId"] = [f"at most {MAX_PROVIDER_ID} characters"]
    if problems or from_phone is None or text is None:
        raise InvalidInbound(problems)
    return Inbound(from_phone, text, to_phone, provider, provider_id.strip() if provider_id else None)


def form_inbound(form: Mapping[str, str]) -> dict[str, str]:
    """A form's fields under our names: ``from``, ``to``, ``text``, ``messageId``, or Twilio's
    ``From``, ``To``, ``Body``, ``MessageSid`` (ours win when both are there)."""
    fields = {ours: form[ours] for ours in TWILIO_FIELDS.values() if ours in form}
    for theirs, ours in TWILIO_FIELDS.items():
        if theirs in form and ours not in fields:
            fields[ours] = form[theirs]
    return fields


def _string(body: Mapping[str, Any], name: str, problems: dict[str, list[str]], *, required: bool) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            problems[name] = ["missing: required"]
        return None
    if not isinstance(value, str):
        problems[name] = ["must be a string"]
        return None
    problem = unstorable_text(value)
    if problem is not None:
        problems[name] = [problem]
        return None
    return value
