"""Live, gapless Celery task progress over Redis Streams.

The worker half lives here; the web half (FastAPI) is in ``celery_progress_ws.web``.
"""

from ._aggregate.track import track
from ._core.errors import (
    BrokerUnavailable,
    ConnectionRefused,
    EntryTooLarge,
    InvalidChannelName,
    InvalidEntryType,
    InvalidOperationId,
    InvalidOrigin,
    MalformedEntry,
    NoOperationContext,
    OperationFinished,
    OperationNotFound,
    ProgressError,
    ServerLimitExceeded,
    Unauthorized,
    UserLimitExceeded,
)
from ._core.keys import validate_operation_id
from ._core.schemas import (
    DeliveredEntry,
    GapReason,
    ProgressData,
    StatusData,
    TaskStatus,
    WireEntry,
    wire_json_schema,
    wire_json_schema_text,
)
from ._core.settings import ProgressSettings
from ._worker.bootstep import ProgressBootstep
from ._worker.publisher import ProgressPublisher
from ._worker.reporting import report_progress, send_event, set_default_publisher
from ._worker.results import PublishResult
from ._worker.signals import enable_queued_events

__all__ = [
    "BrokerUnavailable",
    "ConnectionRefused",
    "DeliveredEntry",
    "EntryTooLarge",
    "GapReason",
    "InvalidChannelName",
    "InvalidEntryType",
    "InvalidOperationId",
    "InvalidOrigin",
    "MalformedEntry",
    "NoOperationContext",
    "OperationFinished",
    "OperationNotFound",
    "ProgressBootstep",
    "ProgressData",
    "ProgressError",
    "ProgressPublisher",
    "ProgressSettings",
    "PublishResult",
    "ServerLimitExceeded",
    "StatusData",
    "TaskStatus",
    "Unauthorized",
    "UserLimitExceeded",
    "WireEntry",
    "enable_queued_events",
    "report_progress",
    "send_event",
    "set_default_publisher",
    "track",
    "validate_operation_id",
    "wire_json_schema",
    "wire_json_schema_text",
]
