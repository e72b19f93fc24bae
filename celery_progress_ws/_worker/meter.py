"""Progress arithmetic: checking counts and turning one raw report into ``chunking_progress`` data.

Pure and I/O-free. A report the throttle holds back is kept as a ``RawProgress`` tuple; it is rendered only when it
is published.

Behaviour for unusual values (``report_progress`` and ``ProgressPublisher.progress``):

- ``current`` and ``total`` must be real numbers (``int``, ``float`` or any ``numbers.Real`` except ``bool``):
  anything else raises ``TypeError``; negative, NaN or infinite values raise ``ValueError``. Both are checked on
  every call, held back or not, before anything is stored or published.
- ``current > total`` is allowed (estimates grow): the percentage is capped at 100 and the ETA is 0.
- ``total == 0`` means "nothing to do": the percentage is 100.
- ``total=None`` means "unknown": percentage and ETA are ``None``; the rate is still computed.
- Extra fields must not reuse a computed field's name: a report that is published raises ``TypeError`` (the first
  report always is, so the mistake shows at once); a held-back value keeps the computed values.
- Extra field values are converted on every call, held back or not, before anything is stored, by the rules of
  ``celery_progress_ws._core.jsonsafe``: str/int/bool/None as they are, NaN and ±infinity as null, datetime/date/time as
  ISO 8601, an Enum as its value, UUID/Decimal/paths as their ``str()``, bytes as UTF-8 text (invalid bytes
  replaced), tuples and sets as lists (sets sorted when they can be), mappings as objects, anything else as its
  ``str()``. A mapping key that is not str/int/float/bool/None, or a ``str()`` that raises, is a ``TypeError``;
  a container inside itself or nesting deeper than 32 levels is a ``ValueError``; each names the field. So nothing a
  caller passes can fail later, when a held-back value is written. A ``message`` that is not a str becomes its
  ``str()`` at call time (``TypeError`` if that raises).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

Count = int | float

RawProgress = tuple[Count, Count | None, str | None, dict[str, Any] | None, float]
"""``(current, total, message, extra fields, time.monotonic() of the call)``, the counts checked and the message and
fields converted, as ``report_progress`` accepted them."""

COMPUTED_FIELDS = frozenset(
    {"progress_percentage", "documents_processed", "total_documents", "message", "rate", "eta_seconds"}
)
"""Names ``report_progress`` fills in itself; extra fields may not use them."""


def check_count(value: object, name: str) -> Count:
    """Return ``value`` as an ``int`` or ``float`` if it is a finite, non-negative real number; raise otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, not {type(value).__name__}")
    number: Count = int(value) if isinstance(value, numbers.Integral) else float(value)
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"{name} must be finite, not {value!r}")
    if number < 0:
        raise ValueError(f"{name} must not be negative, not {value!r}")
    return number


def check_fields(fields: dict[str, Any]) -> None:
    """Raise ``TypeError`` if an extra field would overwrite a computed one."""
    clash = COMPUTED_FIELDS.intersection(fields)
    if clash:
        raise TypeError(f"report_progress() computes {', '.join(sorted(clash))} itself; pass other field names")


class ProgressMeter:
    """Remembers each operation's first report, from which rate and ETA are computed.

    Each method is a single dict operation, so concurrent use from several threads is safe under the GIL.
    """

    __slots__ = ("_first",)

    def __init__(self) -> None:
        self._first: dict[str, tuple[float, Count]] = {}

    def render(self, operation_id: str, raw: RawProgress) -> dict[str, Any]:
        """The ``data`` of the ``chunking_progress`` entry for ``raw``."""
        current, total, message, fields, at = raw
        first_at, first_current = self._first.setdefault(operation_id, (at, current))
        elapsed = at - first_at
        rate = max(current - first_current, 0) / elapsed if elapsed > 0 else None
        data: dict[str, Any] = {
            "progress_percentage": percentage(current, total),
            "documents_processed": current,
            "total_documents": total,
            "chunks_created": None,
            "current_document": None,
            "message": message,
            "rate": None if rate is None else round(rate, 3),
            "eta_seconds": eta_seconds(current, total, rate),
        }
        if fields:  # a computed name can only be here in a held-back value (published ones were refused): skip it
            data.update({name: value for name, value in fields.items() if name not in COMPUTED_FIELDS})
        return data

    def forget(self, operation_id: str) -> None:
        """Drop what is known about ``operation_id`` (its next report starts a new rate baseline)."""
        self._first.pop(operation_id, None)

    def operations(self) -> list[str]:
        """The operations currently remembered."""
        return list(self._first)


def percentage(current: Count, total: Count | None) -> float | None:
    """``current / total`` in percent, capped at 100; 100 for ``total == 0``; ``None`` if the total is unknown."""
    if total is None:
        return None
    if total == 0:
        return 100.0
    return round(min(current / total * 100.0, 100.0), 2)


def eta_seconds(current: Count, total: Count | None, rate: float | None) -> float | None:
    """Seconds until ``current`` reaches ``total`` at ``rate``; 0 when done, ``None`` when it cannot be told."""
    if total is None:
        return None
    remaining = total - current
    if remaining <= 0:
        return 0.0
    if not rate:
        return None
    return round(remaining / rate, 3)
