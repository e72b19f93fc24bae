"""Exceptions raised by celery-progress-ws: every one is a ``ProgressError``.

::

    ProgressError
    ├── InvalidOperationId      (also a ValueError)
    ├── InvalidChannelName      (also a ValueError)
    ├── InvalidEntryType        (also a ValueError)
    ├── InvalidUserDigest       (also a ValueError)
    ├── InvalidCursor           (also a ValueError)
    ├── InvalidStatusFilter     (also a ValueError)
    ├── InvalidOrigin           (also a ValueError)
    ├── MalformedEntry          (also a ValueError)
    ├── EntryTooLarge           (also a ValueError)
    ├── NoOperationContext      (also a RuntimeError)
    ├── TransportClosed         a connection's peer has gone (handled inside the web half)
    │   └── SendStuck           the peer stopped reading: a send outlasted the send timeout
    ├── OperationNotFound       (also a LookupError) cancel: nothing is known about the operation
    ├── OperationFinished       cancel: the operation has already ended
    ├── BrokerUnavailable       cancel: the revoke could not reach the workers
    ├── SourceUnavailable       the stream store cannot be reached right now (answered 503)
    └── ConnectionRefused
        ├── Unauthorized
        ├── UserLimitExceeded
        └── ServerLimitExceeded
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .schemas import TaskStatus


class ProgressError(Exception):
    """Base of every exception this library raises."""


class InvalidOperationId(ProgressError, ValueError):
    """An operation id that cannot safely become part of a Redis key."""


class InvalidChannelName(ProgressError, ValueError):
    """A custom channel name that cannot safely become part of a Redis key."""


class InvalidEntryType(ProgressError, ValueError):
    """An entry type that is not 1-64 characters of ``A-Z a-z 0-9 _ . : -`` (it names the event of an SSE frame)."""


class InvalidUserDigest(ProgressError, ValueError):
    """Not the SHA-256 hex digest that names a user's keys (``keys.user_digest``)."""


class InvalidCursor(ProgressError, ValueError):
    """A ``cursor`` that no page of a user's operation list handed out."""


class InvalidStatusFilter(ProgressError, ValueError):
    """A status filter naming something that is not a ``TaskStatus``."""


class MalformedEntry(ProgressError, ValueError):
    """A stream entry that is not a valid wire entry (not JSON, wrong shape, missing field)."""


class EntryTooLarge(ProgressError, ValueError):
    """An entry whose encoded size exceeds ``ProgressSettings.max_entry_bytes``."""


class NoOperationContext(ProgressError, RuntimeError):
    """``report_progress``/``send_event`` called outside a task without an explicit ``operation_id``."""


class InvalidOrigin(ProgressError, ValueError):
    """Not an origin of the form ``scheme://host[:port]``."""


class TransportClosed(ProgressError):
    """The peer of a connection has gone; raised by a transport instead of its framework's own exception."""


class SendStuck(TransportClosed):
    """A send did not finish within the send timeout: the client has stopped reading, and is dropped."""


class OperationNotFound(ProgressError, LookupError):
    """Nothing is known about the operation to cancel: no stream and no aggregate."""


class OperationFinished(ProgressError):
    """The operation to cancel has already ended; ``status`` is its terminal status when known."""

    def __init__(self, status: TaskStatus | None = None) -> None:
        self.status = status
        super().__init__(f"The operation has already ended ({status.value})" if status else "The operation has ended")


class BrokerUnavailable(ProgressError):
    """The revoke of a cancel request could not be broadcast to the workers."""


class ConnectionRefused(ProgressError):
    """A subscription was refused; ``reason`` is the text sent to the client."""

    reason: str = "Connection refused"

    def __init__(self, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)


class Unauthorized(ConnectionRefused):
    """The user may not watch this operation or channel."""

    reason = "Not authorized"


class UserLimitExceeded(ConnectionRefused):
    """The user already holds ``max_connections_per_user`` connections."""

    reason = "User connection limit exceeded"


class ServerLimitExceeded(ConnectionRefused):
    """The process already holds ``max_total_connections`` connections."""

    reason = "Server connection limit exceeded"


class SourceUnavailable(ProgressError):
    """The stream store cannot be reached right now; delivery resumes when it reconnects."""
