"""The example's ASGI application: ``/progress/...`` (HTTP and WebSocket) to the progress routes, the rest to Django.

Serve it with ``uvicorn example_project.django_site.asgi:application``.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from celery_progress_ws.contrib.django import ProgressDispatcher

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.django_site.settings")
django_app = get_asgi_application()  # sets Django up: the progress module below imports models

from .progress import create_progress  # noqa: E402

application = ProgressDispatcher(create_progress(), django_app, prefix="/progress")
