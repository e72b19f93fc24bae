"""Which browser pages may use the progress routes: the ``Origin`` check, over a plain ASGI scope.

Browsers send a page's cookies with its WebSocket handshakes and form posts to any site, and CORS does not cover
WebSockets, so a page on another origin could watch (and cancel) a logged-in user's operations. A request that
carries an ``Origin`` is served only when that origin is the request's own (scheme and ``Host``) or an allowed one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .._core.errors import InvalidOrigin
from .._core.origins import ANY_ORIGIN, allowed_origin_entry, normalize_origin

logger = logging.getLogger(__name__)

OWN_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
"""The page scheme that matches a request's scheme (a page on ``https`` opens ``wss`` sockets)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

ORIGIN_REFUSED = "Origin not allowed"
CROSS_SITE_REFUSED = "Cross-site request refused"


def own_origin(scope: Mapping[str, Any]) -> str | None:
    """The origin of the request itself: its scheme (``wss`` counts as ``https``) and its ``Host`` header."""
    scheme = OWN_SCHEME.get(str(scope.get("scheme", "")))
    hosts = _header_values(scope, b"host")
    if scheme is None or len(hosts) != 1:
        return None
    try:
        return normalize_origin(f"{scheme}://{hosts[0]}")
    except InvalidOrigin:
        return None


def _header_values(scope: Mapping[str, Any], name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope.get("headers", ()) if key.lower() == name]


class OriginPolicy:
    """Serves requests without ``Origin`` (not from a browser page), from the request's own origin, or from ``allowed``.

    ``allowed`` holds origins (``scheme://host[:port]``) or ``"*"`` for any origin. ``Origin: null`` (sandboxed
    frames, ``file:`` pages, some redirects) is always refused: it does not say which page sent the request.
    """

    __slots__ = ("_allowed", "_any")

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        entries = [allowed_origin_entry(entry) for entry in allowed]
        self._any = ANY_ORIGIN in entries
        self._allowed = frozenset(entries) - {ANY_ORIGIN}

    def refusal(self, scope: Mapping[str, Any]) -> str | None:
        """Why the request in ``scope`` must be refused, or ``None`` to serve it.

        State-changing requests (any method but GET, HEAD, OPTIONS) that a browser marks ``Sec-Fetch-Site:
        cross-site`` are refused as well, unless their origin is listed explicitly.
        """
        origins = _header_values(scope, b"origin")
        origin = _parsed(origins[0]) if len(origins) == 1 else None
        if origins and (origin is None or not (self._any or origin in self._allowed or origin == own_origin(scope))):
            logger.debug("Refused %s %s from origin %r", scope.get("type"), scope.get("path"), origins[0][:100])
            return ORIGIN_REFUSED
        if (
            scope.get("type") == "http"
            and scope.get("method") not in SAFE_METHODS
            and _header_values(scope, b"sec-fetch-site") == ["cross-site"]
            and origin not in self._allowed
        ):
            logger.debug("Refused cross-site %s %s", scope.get("method"), scope.get("path"))
            return CROSS_SITE_REFUSED
        return None


def _parsed(text: str) -> str | None:
    """The normalised origin, or ``None`` for ``null`` and anything else that names no origin."""
    try:
        return normalize_origin(text)
    except InvalidOrigin:
        return None
