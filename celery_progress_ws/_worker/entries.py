"""How a worker publisher makes its entries: append calls, rendered progress, held-back values.

Kept per process and per operation: the operation's appender (its stream key and live channel, validated once), its
meter state (the rate and ETA of its reports) and, for an operation a user owns, the owner's digest: each status and
each written progress entry of an owned operation is followed by the call that updates the owner's summary.
A held-back progress value is written later than it was reported, so its entry carries the time of the report, not of
the write.
``PublisherEntries`` is the innermost base class of ``ProgressPublisher``: it works on the publisher's own state.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from .._core import metrics
from .._core.append import AppendCall, OperationAppender, ScriptCall
from .._core.codec import encode_entry, make_entry
from .._core.errors import ProgressError
from .._core.history import UserHistory, summary_patch
from .._core.keys import KeySpace
from .._core.schemas import CHUNKING_PROGRESS
from .._core.settings import ProgressSettings
from .buffer import Rank
from .meter import ProgressMeter, RawProgress
from .writer import StreamWriter

logger = logging.getLogger(__name__)

MAX_CACHED_OPERATIONS = 4096
"""Operations whose stream key and live channel are kept ready; the cache is emptied when it grows past this."""

_monotonic = time.monotonic


class PublisherEntries:
    """The entry making of ``ProgressPublisher``, which sets these attributes (see its ``_start_clean``)."""

    settings: ProgressSettings
    _keys: KeySpace
    _meter: ProgressMeter
    _appenders: dict[str, OperationAppender]
    """The appender of each recent operation (at most ``MAX_CACHED_OPERATIONS``)."""
    _writer: StreamWriter
    _history: UserHistory
    _owners: dict[str, str]
    """Operation id -> owner digest, for the running tasks a user owns (forgotten when their attempt ends)."""

    def _call(self, operation_id: str, message: str, ttl: int, kind: str) -> AppendCall:
        """The append call of one entry counted as ``kind``; keys are validated once per operation
        (InvalidOperationId on the first)."""
        appender = self._appenders.get(operation_id)
        if appender is None:
            if len(self._appenders) >= MAX_CACHED_OPERATIONS:
                self._appenders.clear()
            appender = OperationAppender(self._keys, operation_id, maxlen=self.settings.stream_maxlen)
            self._appenders[operation_id] = appender
        return appender(message, ttl=ttl, kind=kind)

    def _progress_call(
        self, operation_id: str, raw: RawProgress, timestamp: str | None = None
    ) -> tuple[AppendCall, ScriptCall | None]:
        """The append call of a progress report, rendered with the operation's rate and ETA, and the owner's summary
        update if a user owns the operation (lock held)."""
        data = self._meter.render(operation_id, raw)
        entry = make_entry(CHUNKING_PROGRESS, data, timestamp)
        message = encode_entry(entry, self.settings.max_entry_bytes)
        call = self._call(operation_id, message, self.settings.stream_ttl_seconds, CHUNKING_PROGRESS)
        return call, self._summary_call(operation_id, CHUNKING_PROGRESS, data, entry["timestamp"])

    def _summary_call(
        self, operation_id: str, entry_type: str, data: dict[str, Any], stamp: str, owner: str | None = None
    ) -> ScriptCall | None:
        """The update of the owner's summary (``owner``, else the operation's known owner) an entry makes, if any."""
        digest = owner or self._owners.get(operation_id)
        if digest is None:
            return None
        patch = summary_patch(entry_type, data)
        return None if patch is None else self._history.record(digest, operation_id, patch, stamp)

    def _enqueue_summary(self, call: ScriptCall | None, rank: Rank) -> None:
        """Buffer a summary update right behind its entry (lock held); written by the same drain."""
        if call is not None:
            self._writer.hold(call, rank)

    def _enqueue_trailing(self, operation_id: str, raw: RawProgress) -> None:
        """Buffer a held-back value (lock held); one that cannot be encoded is logged and skipped, never raised.

        Its values were converted when it was reported, so only its size can fail; anything else is a bug, logged with
        its traceback, and must not keep the entries behind it (the terminal status above all) from being written.
        """
        try:
            call, summary = self._progress_call(operation_id, raw, _wall_clock(raw[4]))
            self._writer.hold(call, Rank.PROGRESS)
            self._enqueue_summary(summary, Rank.PROGRESS)
        except ProgressError as exc:
            metrics.worker.dropped(metrics.drop_reason(exc))
            logger.warning("celery-progress-ws: skipped a held-back progress value of %s: %s", operation_id, exc)
        except Exception:
            metrics.worker.dropped("invalid")
            logger.exception("celery-progress-ws: skipped a held-back progress value of %s", operation_id)

    def _forget_entries(self, operation_id: str) -> None:
        """Drop an operation's rate state, cached keys and owner (lock held)."""
        self._meter.forget(operation_id)
        self._appenders.pop(operation_id, None)
        self._owners.pop(operation_id, None)


def _wall_clock(monotonic_at: float) -> str:
    """The ISO-8601 UTC time at which ``time.monotonic()`` read ``monotonic_at``."""
    return datetime.fromtimestamp(time.time() - (_monotonic() - monotonic_at), UTC).isoformat()
