"""Origin strings (``scheme://host[:port]``): parsed and normalised so two spellings of one origin compare equal."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .errors import InvalidOrigin

ANY_ORIGIN = "*"
DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")


def normalize_origin(text: str) -> str:
    """``text`` as a comparable origin: lower-case, default port dropped; raises ``InvalidOrigin``."""
    lowered = text.strip().lower()
    try:
        parts = urlsplit(lowered)
        port = parts.port
    except ValueError as exc:
        raise InvalidOrigin(f"{text[:100]!r} is not an origin such as https://app.example.com") from exc
    host = parts.hostname
    if (
        not _SCHEME.match(parts.scheme)
        or not lowered.startswith(f"{parts.scheme}://")
        or not host
        or "@" in parts.netloc
        or parts.path
        or parts.query
        or parts.fragment
    ):
        raise InvalidOrigin(f"{text[:100]!r} is not an origin such as https://app.example.com")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    if port is None or DEFAULT_PORTS.get(parts.scheme) == port:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def allowed_origin_entry(text: str) -> str:
    """An ``allowed_origins`` entry: ``"*"`` as it is, anything else normalised (``null`` is not an origin)."""
    return ANY_ORIGIN if text.strip() == ANY_ORIGIN else normalize_origin(text)
