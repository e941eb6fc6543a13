"""Tokens a client presents, compared with the configured one without leaking either."""

from __future__ import annotations

import hashlib
import hmac


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of digests: neither the content nor the length of the token leaks.

    Bytes, not str: compare_digest refuses str outside ASCII, which a client may well send.
    """
    return hmac.compare_digest(
        hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest(),
        hashlib.sha256(expected.encode("utf-8")).digest(),
    )
