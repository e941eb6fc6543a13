"""Browser checks: a Host the service answers to (against DNS rebinding) and no cross-site requests (CSRF).

Both run as one middleware, before the token. Programs (curl, the original service's
clients, providers) send none of the browser's headers and pass; a browser's page on
another site, or a page reached under a foreign name, gets a JSON 403 or 421 saying why.

Per route: a handler decorated with :func:`cross_site_allowed` (a page a link from elsewhere
may open) skips the cross-site check, as static files and Swagger UI's pages do; one decorated
with :func:`browser_checks_exempt` (an endpoint only servers call) skips both checks.
Otherwise the Host check is turned off only by ``INSIDER_ALLOWED_HOSTS=*``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
F = TypeVar("F", bound=Callable[..., Any])

# Names the service always answers to, besides the listen address and the address a connection came in on.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("", "0.0.0.0", "::")
_CROSS_SITE_ALLOWED = "__insider_cross_site_allowed__"
_EXEMPT = "__insider_browser_checks_exempt__"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def browser_checks_exempt(handler: F) -> F:
    """Mark a handler that only servers call (a provider's delivery reports): neither check applies.

    Such an endpoint is reached under whatever name the caller was given, and is open to
    cross-site requests anyway; its own authentication protects it.
    """
    setattr(handler, _EXEMPT, True)
    return handler


def cross_site_allowed(handler: F) -> F:
    """Mark a handler as open to cross-site requests (the Host check still applies).

    For pages a link on another site may open (the dashboard). Everything else refuses
    cross-site requests.
    """
    setattr(handler, _CROSS_SITE_ALLOWED, True)
    return handler


def _host_only(host: str) -> str | None:
    """The host of a Host header (or an origin's netloc) without its port, lower case; None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1 :] and not host[end + 1 :].startswith(":")):
            return None
        inner = host[1:end]
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            return None
    name, _, port = host.partition(":")
    if port and not port.isdigit():
        return None
    name = name.rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def _origin_matches_host(origin: str, host_header: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) is this request's own origin, as named by its Host."""
    try:
        parts = urlsplit(origin)
        origin_port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        host_parts = urlsplit(f"{parts.scheme}://{host_header}")
        host_port = host_parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:  # a port out of range, a malformed address
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or host_parts.hostname is None:
        return False
    return parts.hostname.rstrip(".") == host_parts.hostname.rstrip(".") and origin_port == host_port


def _no_envelope(path: str) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class BrowserGuard:
    """The settings of the checks: which hosts the service answers to, and which paths answer in the
    original Go service's envelope (``{"success": false, "error": ...}``)."""

    allowed_hosts: tuple[str, ...]
    original_envelope: Callable[[str], bool] = _no_envelope

    @classmethod
    def for_service(
        cls, allowed: Iterable[str], listen_host: str, original_envelope: Callable[[str], bool] = _no_envelope
    ) -> BrowserGuard:
        """``allowed`` (from INSIDER_ALLOWED_HOSTS); empty means the listen address and the local names."""
        hosts = tuple(allowed)
        if not hosts:
            listen = _host_only(listen_host if not listen_host.count(":") > 1 else f"[{listen_host}]")
            hosts = tuple(dict.fromkeys([*LOCAL_NAMES, *([listen] if listen and listen not in _WILDCARDS else [])]))
        return cls(hosts, original_envelope)

    def host_allowed(self, request: web.Request) -> bool:
        header = request.headers.get("Host")
        if header is None or "*" in self.allowed_hosts:  # no Host (HTTP/1.0): no browser sent it
            return True
        host = _host_only(header)
        if host is None:
            return False
        if host in self.allowed_hosts:
            return True
        if any(entry.startswith(".") and (host == entry[1:] or host.endswith(entry)) for entry in self.allowed_hosts):
            return True
        # The address the connection came in on, by number: probes and scrapers that dial an IP.
        # A rebinding attack always sends its own name, never our address.
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if isinstance(sockname, tuple) and sockname:
            try:
                local = ipaddress.ip_address(str(sockname[0]).split("%")[0])
            except ValueError:
                return False
            # On a dual-stack listener (INSIDER_HOST=::) an IPv4 client arrives as ::ffff:a.b.c.d.
            mapped = local.ipv4_mapped if isinstance(local, ipaddress.IPv6Address) else None
            return host == str(local) or (mapped is not None and host == str(mapped))
        return False

    @staticmethod
    def cross_site_reason(request: web.Request) -> str | None:
        """Why the request comes from another site, or None if it does not (or no browser sent it).

        Sec-Fetch-Site when the browser sends it (every current one does), else Origin, else
        Referer; none of them (curl, programs): not a browser, allowed.
        """
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site is not None:
            if fetch_site.strip().lower() in ("same-origin", "none"):
                return None
            return f"Sec-Fetch-Site: {fetch_site[:40]}"
        host = request.headers.get("Host", "")
        origin = request.headers.get("Origin")
        if origin is not None:
            return None if _origin_matches_host(origin, host) else f"Origin: {origin[:100]}"
        referer = request.headers.get("Referer")
        if referer is not None:
            return None if _origin_matches_host(referer, host) else "Referer from another origin"
        return None


GUARD = web.AppKey("browser_guard", BrowserGuard)


# Swagger UI's pages (aiohttp-apispec's /swagger, and anything served under /swagger/): a link from
# another site may open them; the spec and the API calls they make are same-origin.
SWAGGER_UI_PREFIX = "/swagger"


def _cross_site_allowed(request: web.Request) -> bool:
    """Marked handlers; static files (no effect, no data); Swagger UI's pages."""
    if getattr(request.match_info.handler, _CROSS_SITE_ALLOWED, False):
        return True
    if isinstance(request.match_info.route.resource, web.StaticResource):
        return True
    path = request.path
    return request.method == "GET" and (path == SWAGGER_UI_PREFIX or path.startswith(SWAGGER_UI_PREFIX + "/"))


def _refusal(request: web.Request, status: int, error: str, **extra: str) -> web.Response:
    envelope: dict[str, object] = {"success": False} if request.app[GUARD].original_envelope(request.path) else {}
    return web.json_response({**envelope, "error": error, **extra}, status=status)


@web.middleware
async def browser_checks(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A JSON 421 for a Host the service does not answer to; a JSON 403 for a cross-site request."""
    if getattr(request.match_info.handler, _EXEMPT, False):
        return await handler(request)
    guard = request.app[GUARD]
    if not guard.host_allowed(request):
        host = request.headers.get("Host", "")[:100]
        return _refusal(
            request,
            421,
            f"this service does not answer to the host {host!r}; add it to INSIDER_ALLOWED_HOSTS "
            "(a comma list, or * behind a proxy that checks it)",
            host=host,
        )
    if not _cross_site_allowed(request):
        reason = guard.cross_site_reason(request)
        if reason is not None:
            return _refusal(
                request,
                403,
                "cross-site request refused: a page on another site cannot use this endpoint "
                f"(the browser said {reason})",
            )
    return await handler(request)
