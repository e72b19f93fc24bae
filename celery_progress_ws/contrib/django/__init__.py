"""Django: the progress routes in a Django project's ``asgi.py``, no Django Channels needed (``django`` extra).

::

    django_app = get_asgi_application()
    manager = ProgressManager(settings=ProgressSettings(allowed_origins=django_allowed_origins()))
    progress = create_progress_app(manager, get_user_id=session_user_id, authorize=orm_authorize(may_view))
    application = ProgressDispatcher(progress, django_app, prefix="/progress")
"""

from ._dispatch import ProgressDispatcher
from ._hosts import django_allowed_origins
from ._orm import orm_authorize, run_in_django_thread
from ._session import session_user_id

__all__ = [
    "ProgressDispatcher",
    "django_allowed_origins",
    "orm_authorize",
    "run_in_django_thread",
    "session_user_id",
]
