"""The logged-in Django user of a progress request, read from the Django session cookie it carries."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.http import HttpRequest
from starlette.requests import HTTPConnection

from ._orm import run_in_django_thread


async def session_user_id(connection: HTTPConnection) -> Any:
    """``get_user_id`` for ``create_progress_app``: the primary key of the request's logged-in user, else ``None``.

    The user is the one Django's ``request.user`` would be: the configured session engine loads the session of the
    ``SESSION_COOKIE_NAME`` cookie and ``django.contrib.auth`` resolves it through the authentication backends
    (inactive users and sessions of a changed password are anonymous). It runs in Django's database thread.
    """
    session_key = connection.cookies.get(settings.SESSION_COOKIE_NAME)
    if not session_key:
        return None
    return await _logged_in_user_pk(session_key)


@run_in_django_thread
def _logged_in_user_pk(session_key: str) -> Any:
    engine = import_module(settings.SESSION_ENGINE)
    request = HttpRequest()
    request.session = engine.SessionStore(session_key)
    user = get_user(request)
    return user.pk if user.is_authenticated else None
