"""The per-key throttle that keeps the newest dropped value, driven by a fake clock."""

from __future__ import annotations

from celery_progress_ws._core.throttle import Decision, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_value_publishes_then_later_ones_wait() -> None:
    """The first value of a key publishes; within the interval the next one is scheduled, later ones replace it."""
    clock = Clock()
    throttle: Throttle[int] = Throttle(1.0, clock)
    assert throttle.offer("k", 1) is Decision.PUBLISH
    assert throttle.offer("k", 2) is Decision.SCHEDULE
    assert throttle.offer("k", 3) is Decision.KEPT
    assert throttle.next_due() == 101.0
    assert throttle.pending_keys() == ["k"]
    assert "k" in throttle
    assert len(throttle) == 1


def test_take_due_returns_the_newest_value_once_the_interval_is_over() -> None:
    """take_due() hands out nothing early, then the newest pending value, counted as published now."""
    clock = Clock()
    throttle: Throttle[int] = Throttle(1.0, clock)
    throttle.offer("k", 1)
    throttle.offer("k", 2)
    throttle.offer("k", 3)
    clock.now += 0.5
    assert throttle.take_due() == []
    clock.now += 0.5
    assert throttle.take_due() == [("k", 3)]
    assert throttle.pending_keys() == []
    assert throttle.offer("k", 4) is Decision.SCHEDULE  # the take counted as a publish


def test_keep_replaces_only_a_value_that_is_already_scheduled() -> None:
    """keep() never decides anything new: no slot, nothing pending, or an elapsed interval all say False."""
    clock = Clock()
    throttle: Throttle[int] = Throttle(1.0, clock)
    assert not throttle.keep("k", 1, clock.now)  # unknown key: the first value must be published
    assert throttle.offer("k", 1) is Decision.PUBLISH
    assert not throttle.keep("k", 2, clock.now)  # nothing pending: the owner must schedule it
    assert throttle.offer("k", 2) is Decision.SCHEDULE
    assert throttle.keep("k", 3, clock.now + 0.5)
    assert not throttle.keep("k", 4, clock.now + 1.0)  # the interval is over: the value may be published now
    clock.now += 1.0
    assert throttle.take_due() == [("k", 3)]


def test_every_take_plans_one_more_look_when_the_new_interval_ends() -> None:
    """A value stored by a lock-free keep() just after a take is still published, one interval later."""
    clock = Clock()
    throttle: Throttle[int] = Throttle(1.0, clock)
    throttle.offer("k", 1)
    throttle.offer("k", 2)
    clock.now += 1.0
    assert throttle.take_due() == [("k", 2)]
    assert throttle.next_due() == clock.now + 1.0  # the recheck
    throttle._slots["k"].pending = 3  # what a keep() that checked before the take and stored after it leaves behind
    clock.now += 1.0
    assert throttle.take_due() == [("k", 3)]
    clock.now += 1.0
    assert throttle.take_due() == []  # nothing arrived: the recheck ends and no further look is planned
    assert throttle.next_due() is None


def test_rechecks_follow_every_kind_of_take() -> None:
    """take_pending() and a publish that discards a pending value plan a recheck; one with nothing pending does not."""
    clock = Clock()
    throttle: Throttle[int] = Throttle(1.0, clock)
    throttle.offer("a", 1)
    throttle.offer("a", 2)
    assert throttle.take_pending("a") == 2
    assert throttle.next_due() == clock.now + 1.0
    throttle.offer("b", 1)
    throttle.offer("b", 2)
    assert throttle.offer("b", 3, force=True) is Decision.PUBLISH
    throttle.offer("c", 1)
    clock.now += 1.0
    assert throttle.offer("c", 2) is Decision.PUBLISH  # nothing was pending: no recheck for c
    assert throttle.take_due() == []
    assert throttle.next_due() is None


def test_force_and_elapsed_interval_publish_and_clear_the_pending_value() -> None:
    """force=True, or a value after the interval, publishes and discards the older pending value."""
    clock = Clock()
    throttle: Throttle[int] = Throttle(1.0, clock)
    throttle.offer("k", 1)
    throttle.offer("k", 2)
    assert throttle.offer("k", 3, force=True) is Decision.PUBLISH
    assert throttle.take_pending("k") is None
    clock.now += 1.0
    assert throttle.offer("k", 4) is Decision.PUBLISH


def test_keys_are_independent_and_forgettable() -> None:
    """Each key has its own interval; forget() returns the pending value; forget_idle() drops quiet keys only."""
    clock = Clock()
    throttle: Throttle[int] = Throttle(1.0, clock)
    throttle.offer("a", 1)
    assert throttle.offer("b", 1) is Decision.PUBLISH
    throttle.offer("a", 2)
    assert throttle.take_pending("a") == 2
    throttle.offer("b", 2)
    assert throttle.forget("b") == 2
    assert "b" not in throttle
    clock.now += 10
    assert throttle.forget_idle(5) == 1
    assert len(throttle) == 0
    assert throttle.forget("missing") is None
