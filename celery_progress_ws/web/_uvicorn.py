"""The uvicorn arguments that make the web half's limits hold before a message or connection reaches the app."""

from __future__ import annotations

from typing import Any

from .._core.settings import ProgressSettings

GRACEFUL_SHUTDOWN_SECONDS = 5
"""How long uvicorn waits for open responses before it shuts the app down (event streams end by themselves)."""
HTTP_HEADROOM = 100
"""Connections and requests uvicorn admits beyond ``max_total_connections``: plain HTTP and handshakes refused later."""


def uvicorn_options(settings: ProgressSettings | None = None) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` (``--ws-max-size`` and so on on the command line).

    ``ws_max_size`` makes uvicorn refuse a larger client frame (close 1009) before buffering it; ``limit_concurrency``
    answers 503 past what the process should hold; ``timeout_graceful_shutdown`` keeps SSE clients from delaying a
    deploy. With other WebSocket routes in the same app, raise ``ws_max_size`` to the largest message they accept.
    """
    settings = settings or ProgressSettings()
    return {
        "ws_max_size": settings.max_client_message_bytes,
        "limit_concurrency": settings.max_total_connections + HTTP_HEADROOM,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
    }
