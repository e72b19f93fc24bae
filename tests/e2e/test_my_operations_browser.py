"""End to end in a real headless Chromium: the example page's "Your operations" after a reload, from the user's list
and feed (listMine, subscribeMine), with a real prefork worker and uvicorn. Skipped with test_browser (whose import
skips) where Debian's chromium is missing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_progress_ws._core.keys import KeySpace
from tests.e2e.test_browser import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    RECORD_PERCENTAGES,
    received_ids,
    start_task,
    stream_ids,
    wait_for_full_bar,
)
from tests.support.stack import ExampleStack

pytestmark = pytest.mark.integration

FAILED_TTL_SECONDS = 2


@pytest.fixture
def short_ttl_stack(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[ExampleStack]:
    """The example worker and web app on this test's key prefix, whose failed streams expire after 2 s."""
    example = ExampleStack(
        redis_url, key_prefix, tmp_path, env={"CELERY_PROGRESS_WS_FAILED_TTL_SECONDS": str(FAILED_TTL_SECONDS)}
    )
    try:
        example.start()
        yield example
    finally:
        example.stop()


@pytest.fixture
def browser(short_ttl_stack: ExampleStack) -> Iterator[Any]:
    """A headless Chromium; each test opens its own contexts (one per demo user: each has its own cookie)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def open_page(browser: Any, stack: ExampleStack) -> Any:
    """A new demo user (a fresh context) on the home page, once its list is shown and its feed is open."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.add_init_script(RECORD_PERCENTAGES)
    page = context.new_page()
    page.goto(stack.base_url + "/")
    wait_until_listed(page)
    return page


def wait_until_listed(page: Any) -> None:
    """Wait until the page has shown the user's list and opened their feed."""
    page.wait_for_selector('#operations[data-listed="true"][data-feed="open"]', state="attached", timeout=20_000)


def card_of(page: Any, operation_id: str) -> Any:
    return page.locator(f'article[data-operation-id="{operation_id}"]')


def test_two_running_tasks_reappear_live_after_a_reload_and_another_user_sees_neither(
    browser: Any, short_ttl_stack: ExampleStack, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Two tasks started from the page come back after a reload with moving bars (every stream entry delivered once)
    and reach 100 % completed; another demo user, watching meanwhile, is shown neither and may not read them."""
    from playwright.sync_api import expect

    page = open_page(browser, short_ttl_stack)
    first_card, first = start_task(page, "ingest", documents=10, seconds_per_document=0.4)
    second_card, second = start_task(page, "ingest", documents=10, seconds_per_document=0.4)
    for card in (first_card, second_card):
        expect(card.locator(".badge")).to_have_text("started", timeout=30_000)

    page.reload()
    wait_until_listed(page)
    other = open_page(browser, short_ttl_stack)
    assert other.locator("article").count() == 0
    assert page.locator("article").count() == 2
    for operation_id in (first, second):
        card = card_of(page, operation_id)
        expect(card.locator(".badge")).to_have_text("completed", timeout=30_000)
        expect(card.locator(".percent")).to_have_text("100 %")
        assert received_ids(card) == stream_ids(redis_client, key_prefix, operation_id)
        wait_for_full_bar(card)
    percents = page.evaluate("window.__percents")
    assert [text for text in percents if text not in ("0 %", "100 %")], f"no live percentage after reload: {percents}"
    assert [card_of(page, first).count(), card_of(page, second).count()] == [1, 1]

    assert other.locator("article").count() == 0  # the feed told the other user nothing either
    for operation_id in (first, second):
        snapshot = other.request.get(f"{short_ttl_stack.base_url}/progress/operations/{operation_id}")
        assert snapshot.status == 403
    mine = other.request.get(f"{short_ttl_stack.base_url}/progress/me/operations").json()
    assert mine == {"operations": [], "next_cursor": None}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-my-operations-after-reload.png"), full_page=True)


def test_finished_tasks_show_their_outcome_after_a_reload_even_once_their_stream_expired(
    browser: Any, short_ttl_stack: ExampleStack, redis_client: redis.Redis, key_prefix: str
) -> None:
    """After a reload a failed task shows `failed` with its error although its stream has expired, and a cancelled
    one `cancelled`: both from the user's list, with no stream to read."""
    from playwright.sync_api import expect

    page = open_page(browser, short_ttl_stack)
    failed_card, failed = start_task(page, "failing", documents=4, seconds_per_document=0.1)
    cancelled_card, cancelled = start_task(page, "ingest", documents=40, seconds_per_document=0.5)
    expect(failed_card.locator(".badge")).to_have_text("failed", timeout=30_000)
    expect(cancelled_card.locator(".badge")).to_have_text("started", timeout=30_000)
    cancelled_card.locator(".cancel").click()
    expect(cancelled_card.locator(".badge")).to_have_text("cancelled", timeout=30_000)

    stream = KeySpace(key_prefix).stream(failed)
    deadline = time.monotonic() + FAILED_TTL_SECONDS + 10
    while redis_client.exists(stream):
        assert time.monotonic() < deadline, "the failed task's stream did not expire"
        time.sleep(0.1)

    page.reload()
    wait_until_listed(page)
    failed_card, cancelled_card = card_of(page, failed), card_of(page, cancelled)
    expect(failed_card.locator(".badge")).to_have_text("failed")
    expect(failed_card.locator(".outcome")).to_have_text(
        "RuntimeError: could not parse document-003.pdf: unexpected end of file"
    )
    expect(failed_card.locator(".title")).to_have_text("Ingest (fails half-way)")
    expect(failed_card.locator(".percent")).to_have_text("50 %")
    expect(cancelled_card.locator(".badge")).to_have_text("cancelled")
    assert received_ids(failed_card) == []  # shown from its summary: there was no stream left to read
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-my-operations-finished.png"), full_page=True)


def test_a_task_started_in_one_tab_appears_live_in_the_users_other_tab(
    browser: Any, short_ttl_stack: ExampleStack, redis_client: redis.Redis, key_prefix: str
) -> None:
    """The user's feed tells an open second tab about a task started in the first: its card appears there and
    follows the task to 100 % completed, with every stream entry once."""
    from playwright.sync_api import expect

    first = open_page(browser, short_ttl_stack)
    second = first.context.new_page()
    second.goto(short_ttl_stack.base_url + "/")
    wait_until_listed(second)
    _, operation_id = start_task(first, "ingest", documents=6, seconds_per_document=0.3)
    card = card_of(second, operation_id)
    expect(card.locator(".badge")).to_have_text("completed", timeout=30_000)
    expect(card.locator(".percent")).to_have_text("100 %")
    expect(card.locator(".title")).to_have_text("Ingest documents")
    assert received_ids(card) == stream_ids(redis_client, key_prefix, operation_id)
