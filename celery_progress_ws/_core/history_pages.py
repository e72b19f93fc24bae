"""Pages of a user's operation index, newest first: opaque cursors, status filters, and which summaries to fetch.

Both readers (the web route, async, and the ``ls`` command, sync) read the whole index (it holds at most
``history_max_per_user`` ids) and drive one ``PageBuilder``: it names the ids whose summaries to fetch next, takes
what was fetched, and stops once the page is full and one more match is known (so ``next_cursor`` is ``null`` exactly
on the last page).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection, Sequence
from typing import Any

from .errors import InvalidCursor, InvalidStatusFilter
from .keys import validate_operation_id
from .schemas import TaskStatus

MAX_PAGE = 100
"""The largest page a request may ask for."""
DEFAULT_PAGE = 20

IndexRow = tuple[str, int]
"""An operation id of the index and its score (queued time, µs)."""


def encode_cursor(row: IndexRow) -> str:
    """An opaque, URL-safe cursor naming the position just after ``row``."""
    operation_id, score = row
    return base64.urlsafe_b64encode(f"{score} {operation_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> IndexRow:
    """The position a cursor names; ``InvalidCursor`` for anything ``encode_cursor`` did not make."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, _, operation_id = text.partition(" ")
        return validate_operation_id(operation_id), int(score)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor(f"not a cursor of this list: {cursor[:50]!r}") from exc


def parse_statuses(values: Sequence[str] | None) -> frozenset[TaskStatus] | None:
    """Status filters (repeated or comma-separated) as statuses; ``None`` for no filter; ``InvalidStatusFilter`` for
    a name that is not a status."""
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    try:
        return frozenset(TaskStatus(name) for name in names) or None
    except ValueError as exc:
        raise InvalidStatusFilter(f"unknown status in {names!r}; one of {', '.join(TaskStatus)}") from exc


def index_rows(reply: Sequence[Any]) -> list[IndexRow]:
    """A ``ZREVRANGE ... WITHSCORES`` reply as rows (newest first)."""
    return [(member.decode() if isinstance(member, bytes) else member, int(score)) for member, score in reply]


class PageBuilder:
    """Selects one page from the index rows, fetching summaries in batches."""

    def __init__(
        self,
        rows: list[IndexRow],
        *,
        cursor: str | None = None,
        statuses: Collection[TaskStatus] | None = None,
        limit: int = DEFAULT_PAGE,
    ) -> None:
        if cursor is not None:
            after = decode_cursor(cursor)
            rows = [row for row in rows if (row[1], row[0]) < (after[1], after[0])]
        self._rows = rows
        self._statuses = frozenset(statuses) if statuses else None
        self._limit = max(1, min(limit, MAX_PAGE))
        self._next = 0
        self._taken: list[tuple[IndexRow, dict[str, Any]]] = []

    def wanted(self) -> list[str]:
        """The operation ids whose summaries to fetch next (in this order); empty once the page is decided."""
        if len(self._taken) > self._limit or self._next >= len(self._rows):
            return []
        batch = self._rows[self._next : self._next + self._limit + 1 - len(self._taken)]
        return [operation_id for operation_id, _ in batch]

    def add(self, summaries: Sequence[bytes | str | None]) -> None:
        """The summaries of the ids ``wanted()`` named, in that order (``None`` where one has gone)."""
        for raw in summaries:
            row = self._rows[self._next]
            self._next += 1
            summary = _decode(raw)
            if summary is not None and (self._statuses is None or summary.get("status") in self._statuses):
                self._taken.append((row, summary))

    def result(self) -> dict[str, Any]:
        """``{"operations": [...], "next_cursor": str | None}``."""
        page = self._taken[: self._limit]
        more = len(self._taken) > self._limit
        return {
            "operations": [summary for _, summary in page],
            "next_cursor": encode_cursor(page[-1][0]) if more and page else None,
        }


def _decode(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        summary = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("operation_id"), str) else None
