"""stop_task: how every background task of the web half is stopped."""

from __future__ import annotations

import asyncio

from celery_progress_ws.web._tasks import stop_task


async def test_a_running_task_is_cancelled_and_awaited() -> None:
    """The task has finished (its cleanup ran) by the time stop_task returns."""
    started, cleaned_up = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned_up.set()

    task = asyncio.get_running_loop().create_task(forever())
    await started.wait()
    await stop_task(task)
    assert task.cancelled()
    assert cleaned_up.is_set()


async def test_none_a_finished_task_and_the_callers_own_task_are_left_alone() -> None:
    """Nothing to stop for None; a finished task keeps its result; a task never cancels itself."""
    await stop_task(None)
    done = asyncio.get_running_loop().create_task(asyncio.sleep(0, result="kept"))
    await done
    await stop_task(done)
    assert done.result() == "kept"
    current = asyncio.current_task()
    await stop_task(current)
    assert current is not None
    assert not current.cancelling()
