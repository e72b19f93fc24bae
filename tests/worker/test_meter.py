"""The pure progress arithmetic: count checks, percentage, rate and ETA from raw reports."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from celery_progress_ws._worker.meter import ProgressMeter, check_count, check_fields, eta_seconds, percentage


def raw(current: float, total: float | None, at: float, **fields: object) -> tuple:
    return (current, total, None, dict(fields), at)


def test_rate_and_eta_come_from_the_first_report() -> None:
    """Rate is items per second since the operation's first report; ETA is what remains at that rate."""
    meter = ProgressMeter()
    first = meter.render("op", raw(0, 30, at=10.0))
    assert first["rate"] is None
    assert first["eta_seconds"] is None
    assert first["progress_percentage"] == 0.0
    later = meter.render("op", raw(10, 30, at=12.0))
    assert later["rate"] == 5.0
    assert later["eta_seconds"] == 4.0
    assert later["progress_percentage"] == 33.33


def test_rate_never_goes_negative_and_then_gives_no_eta() -> None:
    """A count that went backwards gives rate 0 and an unknown ETA rather than nonsense."""
    meter = ProgressMeter()
    meter.render("op", raw(5, 10, at=0.0))
    data = meter.render("op", raw(3, 10, at=1.0))
    assert data["rate"] == 0.0
    assert data["eta_seconds"] is None


def test_forget_starts_a_new_baseline() -> None:
    """After forget(), the next report is the operation's first again."""
    meter = ProgressMeter()
    meter.render("op", raw(0, 10, at=0.0))
    meter.forget("op")
    assert meter.render("op", raw(5, 10, at=1.0))["rate"] is None
    assert meter.operations() == ["op"]


def test_extra_fields_fill_in_the_seed_fields() -> None:
    """chunks_created and current_document default to None and take the caller's values; other extras are kept."""
    data = ProgressMeter().render("op", raw(1, 2, at=0.0, chunks_created=4, current_document="a", extra=[1]))
    assert (data["chunks_created"], data["current_document"], data["extra"]) == (4, "a", [1])
    assert list(data)[:8] == [
        "progress_percentage",
        "documents_processed",
        "total_documents",
        "chunks_created",
        "current_document",
        "message",
        "rate",
        "eta_seconds",
    ]


@pytest.mark.parametrize(
    ("value", "expected"), [(3, 3), (2.5, 2.5), (Fraction(3, 2), 1.5), (10**30, 10**30), (0, 0)], ids=repr
)
def test_check_count_accepts_finite_non_negative_reals(value: object, expected: float) -> None:
    """ints stay ints (even huge ones), other reals become floats."""
    result = check_count(value, "current")
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("value", "error"),
    [(-1, ValueError), (-0.5, ValueError), (math.nan, ValueError), (-math.inf, ValueError), (True, TypeError),
     ("1", TypeError), (None, TypeError), (1j, TypeError)],
    ids=repr,
)  # fmt: skip
def test_check_count_refuses_everything_else(value: object, error: type[Exception]) -> None:
    """Negative or non-finite numbers are ValueErrors; bools, strings, None and complex numbers TypeErrors."""
    with pytest.raises(error, match="current"):
        check_count(value, "current")


def test_check_fields_names_every_clash() -> None:
    """The error lists each extra field that would overwrite a computed one."""
    with pytest.raises(TypeError, match="eta_seconds, rate"):
        check_fields({"rate": 1, "eta_seconds": 2, "fine": 3})
    check_fields({"fine": 3})


@pytest.mark.parametrize(
    ("current", "total", "expected"), [(1, 3, 33.33), (5, 4, 100.0), (0, 0, 100.0), (7, 0, 100.0), (2, None, None)]
)
def test_percentage(current: float, total: float | None, expected: float | None) -> None:
    """Capped at 100, 100 for an empty job, None when the total is unknown."""
    assert percentage(current, total) == expected


@pytest.mark.parametrize(
    ("current", "total", "rate", "expected"),
    [(5, 10, 2.5, 2.0), (10, 10, None, 0.0), (12, 10, 1.0, 0.0), (5, 10, None, None), (5, 10, 0.0, None),
     (5, None, 1.0, None)],
)  # fmt: skip
def test_eta(current: float, total: float | None, rate: float | None, expected: float | None) -> None:
    """0 when done, None without a total or a positive rate, else the remaining items over the rate."""
    assert eta_seconds(current, total, rate) == expected
