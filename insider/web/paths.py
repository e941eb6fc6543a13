"""The API's address space: its prefixes, which paths the API token guards, and which are the original service's."""

from __future__ import annotations

# Everything under this prefix needs the token (when one is set); health, metrics, Swagger and the
# dashboard's page stay open, so that probes, scrapers and the login form itself work.
API_PREFIX = "/api/v1"
# The original Go service's routes: GET /messages, /messages/start, /messages/stop.
ORIGINAL_PREFIX = "/messages"
DELIVERY_REPORTS_PATH = "/api/v1/delivery-reports"
INBOUND_PATH = "/api/v1/inbound"
# Under /api/v1 but not guarded by INSIDER_API_TOKEN: they have a token of their own.
OPEN_API_PATHS = frozenset({DELIVERY_REPORTS_PATH})
# Operations (method, path) of that kind on a path whose other operations the token guards: a provider
# posts replies with the receipts' token; listing them is the API's.
OPEN_API_OPERATIONS = frozenset({("POST", INBOUND_PATH)})


def guarded(path: str) -> bool:
    """Whether the token guards ``path``: under /api/v1, or one of the original's /messages routes."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in (API_PREFIX, ORIGINAL_PREFIX))


def is_original(path: str) -> bool:
    """Whether ``path`` is one of the original service's routes, which answer in its envelope."""
    return path == ORIGINAL_PREFIX or path.startswith(ORIGINAL_PREFIX + "/")
