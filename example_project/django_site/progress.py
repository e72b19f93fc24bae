"""The progress routes of the Django example: the logged-in user from the session, ownership from the ``Job`` table."""

from __future__ import annotations

from celery_progress_ws import ProgressSettings, enable_queued_events
from celery_progress_ws.contrib.django import django_allowed_origins, orm_authorize, session_user_id
from celery_progress_ws.web import ProgressApp, ProgressManager, create_progress_app
from example_project.tasks import app as celery_app

from .models import Job


async def owns_job(user_id: int, operation_id: str) -> bool:
    """Only the user who started an operation may watch or cancel it (Django's async ORM)."""
    return await Job.objects.filter(owner_id=user_id, operation_id=operation_id).aexists()


def create_progress() -> ProgressApp:
    """The progress application; settings from ``CELERY_PROGRESS_WS_*``, pages of ``CSRF_TRUSTED_ORIGINS`` allowed."""
    settings = ProgressSettings()
    settings = settings.model_copy(update={"allowed_origins": (*settings.allowed_origins, *django_allowed_origins())})
    enable_queued_events(celery_app, settings)
    manager = ProgressManager(settings=settings)
    return create_progress_app(
        manager,
        get_user_id=session_user_id,
        authorize=orm_authorize(owns_job),
        celery_app=celery_app,
        metrics=True,
    )
