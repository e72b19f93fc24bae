"""Django's ``ALLOWED_HOSTS`` and ``CSRF_TRUSTED_ORIGINS`` applied to the progress routes.

The routes' origin check serves a page of the request's own origin (its scheme and ``Host``) and of
``allowed_origins``. Requests for the routes do not pass through Django, so the dispatcher checks their ``Host``
against ``ALLOWED_HOSTS`` as Django would, and ``django_allowed_origins`` turns ``CSRF_TRUSTED_ORIGINS`` into
``allowed_origins``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from ..._core.errors import InvalidOrigin
from ..._core.origins import normalize_origin

logger = logging.getLogger(__name__)

DEBUG_HOSTS = (".localhost", "127.0.0.1", "[::1]")
"""The hosts Django allows while ``DEBUG`` is on and ``ALLOWED_HOSTS`` is empty."""


def django_allowed_origins() -> list[str]:
    """``CSRF_TRUSTED_ORIGINS`` as ``allowed_origins`` for ``ProgressSettings``: the pages Django trusts with unsafe
    requests may also use the progress routes.

    Entries with a wildcard subdomain (``https://*.example.com``) are left out, with a warning: ``allowed_origins``
    holds exact origins only.
    """
    origins: list[str] = []
    for entry in settings.CSRF_TRUSTED_ORIGINS:
        if "*" in entry:
            logger.warning(
                "CSRF_TRUSTED_ORIGINS entry %r left out of allowed_origins: wildcards are not supported", entry
            )
            continue
        try:
            origins.append(normalize_origin(entry))
        except InvalidOrigin:
            logger.warning("CSRF_TRUSTED_ORIGINS entry %r left out of allowed_origins: not an origin", entry)
    return origins


def allowed_hosts() -> list[str]:
    """``ALLOWED_HOSTS``, or Django's local hosts while ``DEBUG`` is on and it is empty."""
    hosts = list(settings.ALLOWED_HOSTS)
    if not hosts and settings.DEBUG:
        return list(DEBUG_HOSTS)
    return hosts


def host_allowed(scope: Mapping[str, Any]) -> bool:
    """Whether the request's single ``Host`` header names a host of ``ALLOWED_HOSTS`` (patterns as Django's)."""
    hosts = [value.decode("latin-1") for key, value in scope.get("headers", ()) if key.lower() == b"host"]
    if len(hosts) != 1:
        return False
    domain, _ = split_domain_port(hosts[0].lower())
    return bool(domain) and validate_host(domain, allowed_hosts())
