"""The message, its states, send outcomes and validation: plain data, no I/O."""

from __future__ import annotations

import enum
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import phonenumbers
from gsm0338.charset import BASIC_CHARACTER_SET, BASIC_CHARACTER_SET_EXTENSION  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from insider.sending_hours import SendingHoursPolicy

DEFAULT_PRIORITY: Final = 5
MIN_PRIORITY: Final = 0
MAX_PRIORITY: Final = 9


class MessageStatus(enum.StrEnum):
    """Where a message is in its life; the values are stored in the database."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    EXPIRED = "expired"  # not sent before its validUntil; never sent
    CANCELLED = "cancelled"  # taken back while pending; never sent
    DELIVERED = "delivered"  # the provider's receipt says it reached the handset
    UNDELIVERED = "undelivered"  # the provider's receipt says it never will
    SUPPRESSED = "suppressed"  # its number is suppressed for its category (or over a cap); never sent


# Statuses of a message the provider accepted: listed by ``sent_at``.
ACCEPTED_STATUSES = (MessageStatus.SENT, MessageStatus.DELIVERED, MessageStatus.UNDELIVERED)


class Category(enum.StrEnum):
    """What a message is for: routes match it, and consent rules apply to commercial ones."""

    TRANSACTIONAL = "transactional"  # codes, order updates: what the recipient asked for
    COMMERCIAL = "commercial"  # marketing


CATEGORIES: Final = tuple(c.value for c in Category)
# Between a commercial message's content and INSIDER_COMMERCIAL_FOOTER: a line break (one
# GSM-7 septet).
FOOTER_SEPARATOR: Final = "\n"


def text_as_sent(content: str, category: str, footer: str) -> str:
    """What the provider receives: a commercial message's content, a line break and ``footer``
    (INSIDER_COMMERCIAL_FOOTER) when there is one; any other message's content as it is."""
    if footer and category == Category.COMMERCIAL:
        return f"{content}{FOOTER_SEPARATOR}{footer}"
    return content


class SendOrder(enum.StrEnum):
    """Which due messages of one priority go first (INSIDER_SEND_ORDER)."""

    OLDEST = "oldest"
    NEWEST = "newest"


class Encoding(enum.StrEnum):
    """How a message travels: the GSM 03.38 7-bit alphabet, or UCS-2 (UTF-16) for anything else."""

    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class Message:
    """One row of the ``messages`` table."""

    id: int
    recipient_phone: str
    content: str
    status: MessageStatus
    created_at: datetime
    sent_at: datetime | None = None
    message_id: str | None = None
    last_error: str | None = None
    attempts: int = 0
    next_attempt_at: datetime | None = None
    lease_expires_at: datetime | None = None
    idempotency_key: str = ""
    claim_token: str | None = None
    # The UUID a row of the original Go service was known by (PostgreSQL only).
    uuid: str | None = None
    delivered_at: datetime | None = None  # when the final receipt says it happened
    delivery_status: str | None = None  # delivered, undelivered, expired or rejected
    delivery_error: str | None = None  # the provider's error code, if it gave one
    send_at: datetime | None = None
    priority: int = DEFAULT_PRIORITY
    valid_until: datetime | None = None
    encoding: Encoding = Encoding.GSM7
    segments: int = 1
    category: Category = Category.TRANSACTIONAL
    provider: str | None = None  # the provider that accepted it
    cost: float | None = None  # segments x that provider's price per segment, when it has one
    # After an ambiguous attempt, the provider that may have it: the next attempt goes there, with the same key.
    provider_pin: str | None = None
    suppression_reason: str | None = None  # a suppressed one: why (opt-out, cap, ...)
    wait_reason: str | None = None  # a pending one held back: sending-hours or cap (until next_attempt_at)
    respect_sending_hours: bool = True  # False: a transactional message that may go at any hour
    consent_reply: bool = False  # the confirmation of an opt-out or opt-in: never held back by a suppression
    cap_admitted_at: datetime | None = None  # when the frequency cap let it go

    @property
    def waiting_until(self) -> datetime | None:
        """When a pending message held back by sending hours or a cap may go; None otherwise."""
        if self.status is MessageStatus.PENDING and self.wait_reason:
            return self.next_attempt_at
        return None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to queue, already checked: ``recipient_phone`` in E.164, ``segments`` counted."""

    recipient_phone: str
    content: str
    send_at: datetime | None = None
    priority: int = DEFAULT_PRIORITY
    valid_until: datetime | None = None
    encoding: Encoding = Encoding.GSM7
    segments: int = 1
    category: Category = Category.TRANSACTIONAL
    respect_sending_hours: bool = True
    consent_reply: bool = False
    # Known to wait at enqueue (outside its sending hours): stored as due then, with the reason.
    wait_until: datetime | None = None
    wait_reason: str | None = None

    @classmethod
    def of(
        cls,
        recipient_phone: str,
        content: str,
        *,
        send_at: datetime | None = None,
        priority: int = DEFAULT_PRIORITY,
        valid_until: datetime | None = None,
        category: Category = Category.TRANSACTIONAL,
        respect_sending_hours: bool = True,
        consent_reply: bool = False,
    ) -> NewMessage:
        """A NewMessage with its encoding and segments computed from ``content``."""
        encoding, segments = measure(content)
        return cls(
            recipient_phone,
            content,
            send_at,
            priority,
            valid_until,
            encoding,
            segments,
            category,
            respect_sending_hours,
            consent_reply,
        )


class Outcome(enum.StrEnum):
    """What one send attempt (or a refusal to send) came to."""

    SENT = "sent"  # the provider accepted it (any 2xx)
    RETRY = "retry"  # transient: back to pending with a backoff, or failed when out of attempts
    FAILED = "failed"  # permanent: never sent


@dataclass(frozen=True, slots=True)
class SendResult:
    """What the SMS client reports for one request."""

    outcome: Outcome
    status_code: int | None = None
    provider_message_id: str | None = None
    error: str | None = None
    retry_after_s: float | None = None
    # A sent message whose answer was odd after its 2xx status line (logged, not an error).
    warning: str | None = None
    # A retry whose request may have reached the provider (a timeout, a cut after it went out):
    # it goes again to the same provider with the same key. False: certainly not accepted.
    ambiguous: bool = False
    # The provider asked us to slow down (429, Retry-After, SMPP's ESME_RTHROTTLED).
    throttled: bool = False


@dataclass(frozen=True, slots=True)
class Resolution:
    """The state one claimed message is written back with, all fields at once."""

    id: int
    claim_token: str | None
    status: MessageStatus
    sent_at: datetime | None = None
    message_id: str | None = None
    # An expired one's is the failure it last retried on, if any: the database words the reason.
    last_error: str | None = None
    retry_in_s: float | None = None  # pending again: due this many seconds from now
    # An interrupted or never-started attempt does not count against the message.
    uncount_attempt: bool = False
    segments: int | None = None  # a sent one: what it cost, stored for rows inserted without it
    encoding: Encoding | None = None
    # The attempt behind this outcome, written to the message's history with it; None: no event
    # (a message released unsent by a stop).
    attempt: Attempt | None = None
    # The tries of other providers before it, in order (a failover), for the history too.
    earlier: tuple[Attempt, ...] = ()
    provider: str | None = None  # a sent one: the provider that accepted it
    cost: float | None = None  # a sent one: segments x that provider's price per segment
    # A retry after an ambiguous outcome: the provider that may have it (None clears a pin).
    provider_pin: str | None = None
    # Pending again because sending hours or a cap hold it back (None clears it).
    wait_reason: str | None = None
    suppression_reason: str | None = None  # a suppressed one: why


@dataclass(frozen=True, slots=True)
class Attempt:
    """One send attempt, as the message's history keeps it."""

    at: datetime  # when the request started (or the message was refused, for an invalid one)
    # sent, retry, failed, invalid, expired (a retry that would pass validUntil), interrupted (a stop),
    # deferred (sending hours or a cap hold it back: not an attempt), suppressed (never sent)
    outcome: str
    number: int  # the message's attempt count at the time
    status_code: int | None = None
    duration_ms: float | None = None
    error: str | None = None
    provider_message_id: str | None = None
    provider: str | None = None  # the provider it went to


# What neither database can store as text: NUL (PostgreSQL refuses it) and unpaired
# surrogates (no UTF-8 form, so neither PostgreSQL nor SQLite takes them).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def unstorable_text(text: str) -> str | None:
    """Why ``text`` cannot be stored as given (a NUL or an unpaired surrogate), or None when it can.

    Both SQL adapters refuse such a message on enqueue with this reason (a ValueError), the
    API answers 422 with it (for a message's text and a receipt's fields alike), and the
    sender fails such a row (written by another program) instead of sending it.
    """
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "must not contain NUL characters (\\u0000)"
    return "must not contain unpaired surrogates (\\ud800 to \\udfff)"


class UnstorableText(ValueError):
    """A message whose text no database can store (NUL, unpaired surrogates); nothing was written."""


def ensure_storable(**texts: str) -> None:
    """Raise UnstorableText naming the first of ``texts`` (field name = text) that cannot be stored."""
    for name, text in texts.items():
        problem = unstorable_text(text)
        if problem is not None:
            raise UnstorableText(f"{name} {problem}")


def storable_text(text: str) -> str:
    """``text`` with what no database can store (NUL, unpaired surrogates) replaced by U+FFFD.

    For text we record but did not choose: a provider's error or message id. Both SQL
    adapters write such text through this, so they store the same thing.
    """
    return _UNSTORABLE.sub(REPLACEMENT, text)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """What one batch did."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    released: int = 0
    duration_s: float = 0.0
    expired: int = 0
    # The soonest that a message this batch put back to pending is due again (seconds from the
    # batch's end); None: none was put back with a time.
    next_due_s: float | None = None
    deferred: int = 0  # held back by sending hours or a cap: pending until they may go
    suppressed: int = 0  # ended suppressed by a gate (a cap)


# The GSM 03.38 default alphabet and its extension table, from the codec package's own
# tables (the escape code itself is no character). Kept as translate tables: the
# codec's pure-Python encoder costs far more per message than this.
_GSM_BASIC: Final = frozenset(unicodedata.lookup(n) for n in BASIC_CHARACTER_SET.values() if n != "ESCAPE")
_GSM_EXTENSION: Final = frozenset(unicodedata.lookup(n) for n in BASIC_CHARACTER_SET_EXTENSION.values())
_DROP_GSM: Final = str.maketrans(dict.fromkeys(_GSM_BASIC | _GSM_EXTENSION))
_DROP_EXTENSION: Final = str.maketrans(dict.fromkeys(_GSM_EXTENSION))
GSM7_SINGLE: Final = 160
GSM7_PART: Final = 153
UCS2_SINGLE: Final = 70
UCS2_PART: Final = 67


def measure(content: str) -> tuple[Encoding, int]:
    """The encoding and the number of SMS segments ``content`` takes.

    GSM-7 when every character is in the GSM 03.38 default alphabet or its extension
    table (an extension character takes two septets): one segment up to 160 septets,
    else ceil(septets / 153). Otherwise UCS-2, counted in UTF-16 code units (an emoji
    takes two): one segment up to 70, else ceil(units / 67).
    """
    if not content.translate(_DROP_GSM):
        septets = 2 * len(content) - len(content.translate(_DROP_EXTENSION))
        return Encoding.GSM7, 1 if septets <= GSM7_SINGLE else math.ceil(septets / GSM7_PART)
    units = len(content.encode("utf-16-le", "surrogatepass")) // 2
    return Encoding.UCS2, 1 if units <= UCS2_SINGLE else math.ceil(units / UCS2_PART)


class InvalidPhone(ValueError):
    """A recipient that is not a possible phone number; the message says why."""


_PARSE_REASONS: Final = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "no country code: write it as +<country code>...",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}
_POSSIBLE_REASONS: Final = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short for its country",
    phonenumbers.ValidationResult.TOO_LONG: "too long for its country",
    phonenumbers.ValidationResult.INVALID_LENGTH: "not a possible length for its country",
}


def normalize_phone(text: str, region: str = "") -> str:
    """``text`` as an E.164 number (``+905301234001``), or InvalidPhone saying why.

    Parsed by libphonenumber: international forms always; national forms
    (``0530 123 40 01``) when ``region`` (an ISO country code) is given. Accepted when
    the number is *possible* (its length fits its country), not only when it is assigned.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidPhone("empty")
    if len(text) > 64:  # libphonenumber refuses longer input too; say so before parsing
        raise InvalidPhone("too long")
    try:
        number = phonenumbers.parse(text, region.upper() or None)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_REASONS.get(exc.error_type, "not a phone number")
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE and (
            region or text.lstrip().startswith("+")
        ):
            reason = "unknown country code"
        raise InvalidPhone(reason) from None
    possible = phonenumbers.is_possible_number_with_reason(number)
    if possible == phonenumbers.ValidationResult.IS_POSSIBLE_LOCAL_ONLY:
        raise InvalidPhone("a local number without its area code")
    if possible != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidPhone(_POSSIBLE_REASONS.get(possible, "not a possible number"))
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def is_region(code: str) -> bool:
    """Whether ``code`` is an ISO 3166 country code libphonenumber knows (``TR``, ``US``, ...)."""
    return code.upper() in phonenumbers.SUPPORTED_REGIONS


def content_error(content: str, max_length: int, max_segments: int = 0) -> str | None:
    """Why ``content`` can never be sent, or None. Length counts Unicode code points."""
    if not isinstance(content, str) or not content.strip():
        return "content is empty"
    problem = unstorable_text(content)
    if problem is not None:
        return f"content {problem}"
    if len(content) > max_length:
        return f"content is {len(content)} characters, over the limit of {max_length}"
    if max_segments:
        encoding, segments = measure(content)
        if segments > max_segments:
            return f"content takes {segments} {encoding.value} segments, over the limit of {max_segments}"
    return None


def validation_error(
    recipient_phone: str, content: str, max_length: int, *, region: str = "", max_segments: int = 0
) -> str | None:
    """Why a message can never be sent, or None when it can (see :func:`check_message`)."""
    try:
        check_message(recipient_phone, content, max_length, region=region, max_segments=max_segments)
    except InvalidMessage as exc:
        return str(exc)
    return None


class InvalidMessage(ValueError):
    """A message that can never be sent; ``field`` is ``to`` or ``content``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


def footer_error(content: str, category: str, footer: str, max_length: int, max_segments: int = 0) -> str | None:
    """Why a text that passes :func:`content_error` alone cannot be sent with its footer, or None."""
    sent = text_as_sent(content, category, footer)
    reason = content_error(sent, max_length, max_segments) if sent != content else None
    return f"{reason} (with the commercial footer)" if reason is not None else None


def check_message(
    recipient_phone: str, content: str, max_length: int, *, region: str = "", max_segments: int = 0
) -> str:
    """The recipient in E.164 when the message can be sent; else InvalidMessage saying why."""
    try:
        phone = normalize_phone(recipient_phone, region)
    except InvalidPhone as exc:
        raise InvalidMessage("to", f"recipient_phone is not a possible phone number ({exc})") from None
    reason = content_error(content, max_length, max_segments)
    if reason is not None:
        raise InvalidMessage("content", reason)
    return phone


# The times a message or a receipt may carry, in UTC: what both databases store and read back.
# SQLite keeps times as fixed-width text with a four-digit year, and Python's datetime ends
# with year 9999; ``9999-12-31T23:59:59-14:00`` is past the end once converted to UTC.
EARLIEST_TIME: Final = datetime(1000, 1, 1, tzinfo=UTC)
LATEST_TIME: Final = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
TIME_RANGE: Final = "from 1000-01-01T00:00:00Z to 9999-12-31T23:59:59Z in UTC"
_RFC3339_PROBLEM: Final = "must be an RFC 3339 date-time with an offset (2026-12-01T09:00:00+03:00 or ...Z)"


def as_utc(when: datetime) -> datetime:
    """An aware ``when`` in UTC, or ValueError when it lies outside :data:`TIME_RANGE`.

    The one rule for every time the service accepts (the API's ``sendAt``, ``validUntil``,
    a receipt's ``doneAt``, the same fields of ``enqueue`` and ``enqueue --file``): a time
    accepted is a time both databases can store and give back.
    """
    try:
        utc = when.astimezone(UTC)  # an offset can carry the time past year 9999 (or before year 1)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST_TIME <= utc <= LATEST_TIME:
        raise ValueError(f"must be {TIME_RANGE}")
    return utc


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time with an offset (``2026-12-01T09:00:00+03:00``, ``...Z``) as aware UTC.

    ValueError saying why for anything looser (no offset, no time, not a date-time at all)
    and for a time outside :data:`TIME_RANGE`.
    """
    value = text.strip() if isinstance(text, str) else ""
    if len(value) < 20 or value[10] not in "Tt " or value[4] != "-" or value[7] != "-":
        raise ValueError(_RFC3339_PROBLEM)
    try:
        when = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1] in "Zz" else value)
    except ValueError:
        raise ValueError(_RFC3339_PROBLEM) from None
    if when.tzinfo is None:
        raise ValueError("must have an offset (Z or +03:00): a time without one is ambiguous")
    return as_utc(when)


def build_message(
    to: str,
    content: str,
    *,
    send_at: datetime | None,
    priority: int,
    valid_until: datetime | None,
    now: datetime,
    max_length: int,
    region: str = "",
    max_segments: int = 0,
    category: str = Category.TRANSACTIONAL,
    footer: str = "",
    respect_sending_hours: bool = True,
    sending_hours: SendingHoursPolicy | None = None,
) -> NewMessage:
    """A message checked as the API and ``enqueue`` check it; InvalidMessage names the bad field.

    ``to`` is normalised to E.164; both times must lie in :data:`TIME_RANGE` (they are stored
    in UTC); ``valid_until`` must be in the future and after ``send_at``; ``category`` is one
    of :class:`Category`'s values. The limits, the encoding and the segments count the text as
    sent: a commercial message's with ``footer`` (see :func:`text_as_sent`). Only a
    transactional message may set ``respect_sending_hours`` false; with ``sending_hours``
    (INSIDER_SENDING_HOURS), one due outside them is marked to wait until they open.
    """
    phone = check_message(to, content, max_length, region=region, max_segments=max_segments)
    try:  # times parsed elsewhere (an embedding program's own) meet the same rule
        send_at = as_utc(send_at) if send_at is not None else None
    except ValueError as exc:
        raise InvalidMessage("sendAt", f"sendAt {exc}") from None
    try:
        valid_until = as_utc(valid_until) if valid_until is not None else None
    except ValueError as exc:
        raise InvalidMessage("validUntil", f"validUntil {exc}") from None
    if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise InvalidMessage("priority", f"priority must be a whole number from {MIN_PRIORITY} to {MAX_PRIORITY}")
    if category not in CATEGORIES:
        raise InvalidMessage("category", f"category must be {' or '.join(CATEGORIES)}")
    reason = footer_error(content, category, footer, max_length, max_segments)
    if reason is not None:
        raise InvalidMessage("content", reason)
    sent = text_as_sent(content, category, footer)
    if valid_until is not None:
        if valid_until <= now:
            raise InvalidMessage("validUntil", "validUntil must be in the future")
        if send_at is not None and valid_until <= send_at:
            raise InvalidMessage("validUntil", "validUntil must be after sendAt")
    if not isinstance(respect_sending_hours, bool):
        raise InvalidMessage("respectSendingHours", "respectSendingHours must be true or false")
    if not respect_sending_hours and category != Category.TRANSACTIONAL:
        raise InvalidMessage("respectSendingHours", "respectSendingHours may be false only for transactional messages")
    encoding, segments = measure(sent)
    message = NewMessage(
        phone,
        content,
        send_at,
        priority,
        valid_until,
        encoding,
        segments,
        Category(category),
        respect_sending_hours=respect_sending_hours,
    )
    return sending_hours.hold(message, now) if sending_hours is not None else message


def mask_phone(phone: str | None) -> str:
    """A phone number fit for logs: country prefix and last two digits only."""
    if not phone:
        return ""
    if len(phone) <= 6:
        return "*" * len(phone)
    return phone[:4] + "*" * (len(phone) - 6) + phone[-2:]


def slot_tolerance_s(interval_s: float) -> float:
    """How late a slot may be taken and still keep the grid: 5% of it, at most 1 s.

    The repositories take the slot in SQL (``acquire_slot``, once per dialect) with this tolerance.
    """
    return min(0.05 * interval_s, 1.0)
