"""Live, gapless Celery task progress over Redis Streams.

The worker half lives here; the web half (FastAPI) is in ``celery_progress_ws.web``.
"""

from ._errors import (
    ConnectionRefused,
    EntryTooLarge,
    InvalidChannelName,
    InvalidOperationId,
    MalformedEntry,
    NoOperationContext,
    ProgressError,
    ServerLimitExceeded,
    Unauthorized,
    UserLimitExceeded,
)
from ._keys import validate_operation_id
from ._schemas import (
    DeliveredEntry,
    GapReason,
    ProgressData,
    StatusData,
    TaskStatus,
    WireEntry,
    wire_json_schema,
)
from ._settings import ProgressSettings

__all__ = [
    "ConnectionRefused",
    "DeliveredEntry",
    "EntryTooLarge",
    "GapReason",
    "InvalidChannelName",
    "InvalidOperationId",
    "MalformedEntry",
    "NoOperationContext",
    "ProgressData",
    "ProgressError",
    "ProgressSettings",
    "ServerLimitExceeded",
    "StatusData",
    "TaskStatus",
    "Unauthorized",
    "UserLimitExceeded",
    "WireEntry",
    "validate_operation_id",
    "wire_json_schema",
]
