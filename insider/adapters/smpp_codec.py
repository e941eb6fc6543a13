"""SMPP 3.4 as insider speaks it, without a connection: data_coding and concatenated parts, addresses,
the command_status of an answer, and delivery receipts read from a deliver_sm.

The PDUs themselves are smpp34's (its Rust codec); this module decides what goes in them
and what comes out of them. :mod:`insider.adapters.smpp` is the bind that sends them.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from typing import Any, Final

import smpp34

from insider.domain import (
    GSM7_PART,
    GSM7_SINGLE,
    UCS2_PART,
    UCS2_SINGLE,
    Encoding,
    Outcome,
    SendResult,
    measure,
)

# data_coding (SMPP 3.4 5.2.19): the SMSC's default alphabet (GSM 03.38 here, one octet per
# septet), and UCS-2 (sent as UTF-16-BE, so an emoji is a surrogate pair).
DATA_CODING_GSM7: Final = 0x00
DATA_CODING_UCS2: Final = 0x08
# esm_class (5.2.12): UDH indicator on a submit; the message type bits of a deliver_sm.
ESM_UDHI: Final = 0x40
ESM_TYPE_MASK: Final = 0x3C
ESM_DELIVERY_RECEIPT: Final = 0x04
ESM_INTERMEDIATE_NOTIFICATION: Final = 0x20
# Type of number / numbering plan (5.2.5, 5.2.6).
TON_INTERNATIONAL: Final = 1
TON_ALPHANUMERIC: Final = 5
NPI_UNKNOWN: Final = 0
NPI_E164: Final = 1
MAX_ALPHANUMERIC_SOURCE: Final = 11  # what a handset shows
MAX_NUMERIC_SOURCE: Final = 20  # source_addr is a C-Octet String of at most 21
MAX_DESTINATION: Final = 20  # destination_addr likewise

# command_status of a submit_sm_resp (SMPP 3.4 5.1.3) that says the SMSC did not take the
# message. Each is a certain non-acceptance: never ambiguous. Transient ones are tried again
# (the throttling ones with ``throttled``); permanent ones fail the message. A status not in
# either table (vendor-specific 0x400-0x4FF, ...) is taken as transient: the sender's attempt
# limit still ends it.
TRANSIENT_STATUSES: Final[dict[int, str]] = {
    0x00000004: "ESME_RINVBNDSTS",  # incorrect bind status for the command
    0x00000008: "ESME_RSYSERR",  # system error
    0x00000014: "ESME_RMSGQFUL",  # message queue full
    0x00000045: "ESME_RSUBMITFAIL",  # submit_sm failed
    0x00000058: "ESME_RTHROTTLED",  # throttling error: exceeded allowed message limits
    0x00000064: "ESME_RX_T_APPN",  # temporary application error
    0x000000FF: "ESME_RUNKNOWNERR",  # unknown error
}
THROTTLING_STATUSES: Final = frozenset({0x00000014, 0x00000058})
PERMANENT_STATUSES: Final[dict[int, str]] = {
    0x00000001: "ESME_RINVMSGLEN",  # message length is invalid
    0x00000002: "ESME_RINVCMDLEN",  # command length is invalid
    0x00000003: "ESME_RINVCMDID",  # invalid command id
    0x00000006: "ESME_RINVPRTFLG",  # priority flag is invalid
    0x00000007: "ESME_RINVREGDLVFLG",  # registered delivery flag is invalid
    0x0000000A: "ESME_RINVSRCADR",  # invalid source address
    0x0000000B: "ESME_RINVDSTADR",  # invalid destination address
    0x00000015: "ESME_RINVSERTYP",  # invalid service type
    0x00000043: "ESME_RINVESMCLASS",  # invalid esm_class field data
    0x00000048: "ESME_RINVSRCTON",  # invalid source address TON
    0x00000049: "ESME_RINVSRCNPI",  # invalid source address NPI
    0x00000050: "ESME_RINVDSTTON",  # invalid destination address TON
    0x00000051: "ESME_RINVDSTNPI",  # invalid destination address NPI
    0x00000061: "ESME_RINVSCHED",  # invalid scheduled delivery time
    0x00000062: "ESME_RINVEXPIRY",  # invalid validity period
    0x00000063: "ESME_RINVDFTMSGID",  # predefined message invalid or not found
    0x00000065: "ESME_RX_P_APPN",  # permanent application error
    0x000000C0: "ESME_RINVOPTPARSTREAM",  # error in the optional part of the PDU body
    0x000000C1: "ESME_ROPTPARNOTALLWD",  # optional parameter not allowed
    0x000000C2: "ESME_RINVPARLEN",  # invalid parameter length
    0x000000C3: "ESME_RMISSINGOPTPARAM",  # expected optional parameter missing
    0x000000C4: "ESME_RINVOPTPARAMVAL",  # invalid optional parameter value
}

# message_state (5.3.2.35) of a receipt, as the word of the appendix B text that
# insider.receipt_parsing knows (DELIVRD, UNDELIV, ...).
MESSAGE_STATES: Final[dict[int, str]] = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}
TLV_RECEIPTED_MESSAGE_ID: Final = 0x001E
TLV_MESSAGE_STATE: Final = 0x0427
TLV_NETWORK_ERROR_CODE: Final = 0x0423
TLV_MESSAGE_PAYLOAD: Final = 0x0424

# SMPP 3.4 appendix B, the de-facto form of a receipt's text (the spec calls it an example,
# every SMSC sends it): ``id:IIIIIIIIII sub:SSS dlvrd:DDD submit date:YYMMDDhhmm done
# date:YYMMDDhhmm stat:DDDDDDD err:E text: ...``. No maintained library parses it without
# side effects (aiosmpplib does, but changes the logging module at import), so a small
# expression does. ``text:`` (the start of the message) comes last and may hold anything.
_RECEIPT_FIELD: Final = re.compile(r"(?i)(?:^|\s)(id|sub|dlvrd|submit date|done date|stat|err):(\S*)")
_RECEIPT_TEXT_START: Final = re.compile(r"(?i)(?:^|\s)text:")
_RECEIPT_DATE: Final = re.compile(r"(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})?")


def encode_parts(content: str, reference: int) -> tuple[int, list[bytes]]:
    """``(data_coding, short_messages)`` for ``content``: one, or concatenated parts each with a UDH.

    GSM-7 when :func:`insider.domain.measure` says so (the gsm0338 codec, one octet per
    septet, data_coding 0), else UCS-2 (UTF-16-BE, data_coding 8). One message up to 160
    septets or 70 UTF-16 units; beyond, parts of 153 septets or 67 units after a 6-octet UDH
    (IEI 0x00, 8-bit ``reference``, total, sequence), never cutting an extension character
    (escape and its character) or a surrogate pair: such a part is one shorter.
    """
    encoding, _ = measure(content)
    encoded: bytes | None = None
    if encoding is Encoding.GSM7:
        with contextlib.suppress(UnicodeEncodeError):
            encoded = content.encode("gsm03.38")
    if encoded is not None:
        coding, width, single, part = DATA_CODING_GSM7, 1, GSM7_SINGLE, GSM7_PART
    else:
        encoded = content.encode("utf-16-be")
        coding, width, single, part = DATA_CODING_UCS2, 2, UCS2_SINGLE, UCS2_PART
    if len(encoded) <= single * width:
        return coding, [encoded]
    chunks = []
    start = 0
    while start < len(encoded):
        end = min(start + part * width, len(encoded))
        if end < len(encoded):
            if width == 1 and encoded[end - 1] == 0x1B:  # an escape whose character would go to the next part
                end -= 1
            elif width == 2 and 0xD8 <= encoded[end - 2] <= 0xDB:  # a high surrogate without its low one
                end -= 2
        chunks.append(encoded[start:end])
        start = end
    if len(chunks) > 255:
        raise ValueError(f"the message takes {len(chunks)} parts; a UDH counts 255 at most")
    header = bytes((0x05, 0x00, 0x03, reference & 0xFF, len(chunks)))
    return coding, [header + bytes((number,)) + chunk for number, chunk in enumerate(chunks, 1)]


def source_address(source: str) -> tuple[str, int, int]:
    """``(source_addr, ton, npi)``: digits (an optional leading +) are an international number, else alphanumeric."""
    text = source.strip()
    digits = text.removeprefix("+")
    if digits.isascii() and digits.isdigit():
        if len(digits) > MAX_NUMERIC_SOURCE:
            raise ValueError(f"a numeric source has at most {MAX_NUMERIC_SOURCE} digits, not {len(digits)}")
        return digits, TON_INTERNATIONAL, NPI_E164
    if not text or not text.isascii() or not text.isprintable() or len(text) > MAX_ALPHANUMERIC_SOURCE:
        raise ValueError(
            f"source must be a number or 1 to {MAX_ALPHANUMERIC_SOURCE} printable ASCII characters, not {source!r}"
        )
    return text, TON_ALPHANUMERIC, NPI_UNKNOWN


def status_name(command_status: int) -> str:
    """The SMPP 3.4 name of a command_status (``ESME_RTHROTTLED``), or its hex value."""
    name = TRANSIENT_STATUSES.get(command_status) or PERMANENT_STATUSES.get(command_status)
    return f"{name} (0x{command_status:08X})" if name else f"command_status 0x{command_status:08X}"


def refused(command_status: int, *, where: str = "") -> SendResult:
    """The outcome of a submit_sm_resp with an error status: a certain non-acceptance."""
    error = f"the SMSC refused the message{where}: {status_name(command_status)}"
    if command_status in PERMANENT_STATUSES:
        return SendResult(Outcome.FAILED, error=error)
    return SendResult(Outcome.RETRY, error=error, throttled=command_status in THROTTLING_STATUSES)


def _tlv(tlvs: list[smpp34.Tlv], tag: int) -> smpp34.Tlv | None:
    return next((t for t in tlvs if t.tag == tag), None)


def _receipt_time(text: str) -> str | None:
    found = _RECEIPT_DATE.fullmatch(text)
    if found is None:
        return None
    yy, mo, dd, hh, mi, ss = (int(v) if v else 0 for v in found.groups())
    try:  # the text carries no zone: read as UTC, as the receipts endpoint reads a time without an offset
        return datetime(2000 + yy, mo, dd, hh, mi, ss, tzinfo=UTC).isoformat()
    except ValueError:
        return None


def receipt_text_fields(text: str) -> dict[str, str]:
    """The fields of an SMPP 3.4 appendix B receipt text (``id``, ``stat``, ``err``, ``done date``, ...)."""
    head = _RECEIPT_TEXT_START.split(text, maxsplit=1)[0]
    return {key.lower(): value for key, value in _RECEIPT_FIELD.findall(head)}


def is_receipt(esm_class: int, tlvs: list[smpp34.Tlv]) -> bool:
    """Whether a deliver_sm is a delivery receipt: its message type, or the receipt TLVs."""
    kind = esm_class & ESM_TYPE_MASK
    if kind in (ESM_DELIVERY_RECEIPT, ESM_INTERMEDIATE_NOTIFICATION):
        return True
    return any(t.tag in (TLV_RECEIPTED_MESSAGE_ID, TLV_MESSAGE_STATE) for t in tlvs)


def receipt_of(short_message: bytes, data_coding: int, tlvs: list[smpp34.Tlv]) -> dict[str, Any] | None:
    """A receipt in the shape of ``POST /api/v1/delivery-reports`` (``messageId``, ``status``,
    ``errorCode``?, ``doneAt``?), or None when it names no message or no state.

    The TLVs first (``receipted_message_id``, ``message_state``, ``network_error_code``), the
    appendix B text for what they do not carry (and always for ``done date``, which no TLV has).
    """
    text = (short_message or _payload(tlvs)).decode(
        "utf-16-be" if data_coding == DATA_CODING_UCS2 else "latin-1", "replace"
    )
    fields = receipt_text_fields(text)
    id_tlv = _tlv(tlvs, TLV_RECEIPTED_MESSAGE_ID)
    message_id = (id_tlv.as_string() if id_tlv is not None else None) or fields.get("id")
    message_id = message_id.strip("\x00 ") if message_id else None
    state_tlv = _tlv(tlvs, TLV_MESSAGE_STATE)
    state = MESSAGE_STATES.get(state_tlv.as_int() or 0) if state_tlv is not None else None
    status = state or fields.get("stat")
    if not message_id or not status:
        return None
    receipt: dict[str, Any] = {"messageId": message_id, "status": status}
    error_tlv = _tlv(tlvs, TLV_NETWORK_ERROR_CODE)
    if error_tlv is not None and len(error_tlv.value) == 3 and int.from_bytes(error_tlv.value[1:], "big"):
        receipt["errorCode"] = str(int.from_bytes(error_tlv.value[1:], "big"))
    elif fields.get("err", "").strip("0"):
        receipt["errorCode"] = fields["err"]
    done_at = _receipt_time(fields.get("done date", ""))
    if done_at is not None:
        receipt["doneAt"] = done_at
    return receipt


def _payload(tlvs: list[smpp34.Tlv]) -> bytes:
    found = _tlv(tlvs, TLV_MESSAGE_PAYLOAD)
    return found.value if found is not None else b""


_TEXT_CODECS: Final = {DATA_CODING_GSM7: "gsm03.38", 0x01: "ascii", 0x03: "latin-1", DATA_CODING_UCS2: "utf-16-be"}


def inbound_of(event: smpp34.DeliverSmEvent) -> dict[str, Any]:
    """A deliver_sm that is not a receipt (a handset's reply) as ``{"from", "to", "text"}``.

    ``from`` gets a ``+`` when it is an international number (TON 1). A part of a
    concatenated message comes as its own text, without its UDH.
    """
    body = event.short_message or _payload(event.tlvs)
    if event.esm_class & ESM_UDHI and body:
        body = body[1 + body[0] :]
    text = body.decode(_TEXT_CODECS.get(event.data_coding, "latin-1"), "replace")
    sender = event.source_addr
    if event.source_addr_ton == TON_INTERNATIONAL and sender.isdigit():
        sender = "+" + sender
    return {"from": sender, "to": event.destination_addr, "text": text}
