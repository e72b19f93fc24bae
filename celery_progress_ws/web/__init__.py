"""The web half: deliver operation progress from Redis to browsers over WebSocket and Server-Sent Events.

::

    manager = ProgressManager()
    app = FastAPI(lifespan=manager.lifespan)
    app.include_router(create_progress_router(manager, get_user_id=..., authorize=...), prefix="/progress")
    uvicorn.run(app, **uvicorn_options(manager.settings))

Other ASGI frameworks mount ``create_progress_app(manager, get_user_id=..., authorize=...)`` instead.
"""

from ._app import ProgressApp, create_progress_app
from ._async_publisher import AsyncProgressPublisher
from ._manager import ProgressManager
from ._mine import owner_only
from ._router import Authorize, create_progress_router
from ._state import OperationGetter
from ._uvicorn import uvicorn_options

__all__ = [
    "AsyncProgressPublisher",
    "Authorize",
    "OperationGetter",
    "ProgressApp",
    "ProgressManager",
    "create_progress_app",
    "create_progress_router",
    "owner_only",
    "uvicorn_options",
]
