"""End to end in a real headless Chromium: the Django example's page (login, start a task, its bar), served by
uvicorn through ``ProgressDispatcher`` and fed by a real prefork worker. Skipped with test_browser (whose import
skips) where Debian's chromium is missing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_progress_ws._core.keys import KeySpace
from tests.e2e.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, RECORD_PERCENTAGES, wait_for_full_bar
from tests.support.django_stack import DjangoStack

pytestmark = pytest.mark.integration


@pytest.fixture
def django_stack(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[DjangoStack]:
    """The Django example (its own SQLite file), a prefork worker and uvicorn, on this test's key prefix."""
    stack = DjangoStack(redis_url, key_prefix, tmp_path)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def browser(django_stack: DjangoStack) -> Iterator[Any]:
    """A headless Chromium; each test opens its own contexts (one per logged-in user)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


def logged_in_page(browser: Any, stack: DjangoStack, username: str) -> Any:
    """A page of a fresh browser context that logged in through Django's login form and landed on the demo page."""
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    context.add_init_script(RECORD_PERCENTAGES)
    page = context.new_page()
    page.goto(stack.base_url + "/")  # redirected to the login form
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", username)
    page.click("#login-button")
    page.wait_for_selector("#start-button")
    return page


def start_task(page: Any, documents: int, seconds_per_document: float) -> tuple[Any, str]:
    """Fill the form, start a task and return its card and operation id."""
    page.fill("input[name=documents]", str(documents))
    page.fill("input[name=seconds_per_document]", str(seconds_per_document))
    with page.expect_response("**/api/tasks") as answer:
        page.click("#start-button")
    operation_id = answer.value.json()["operation_id"]
    return page.locator(f'article[data-operation-id="{operation_id}"]'), operation_id


def test_logged_in_user_sees_the_bar_reach_100_percent_and_completed(
    browser: Any, django_stack: DjangoStack, redis_client: redis.Redis, key_prefix: str
) -> None:
    """After logging in, a task started from the Django page shows intermediate percentages and ends at 100 %
    `completed`, and the page got every stream entry exactly once, through the session cookie alone."""
    from playwright.sync_api import expect

    page = logged_in_page(browser, django_stack, "demo")
    expect(page.locator("#user")).to_have_text("demo")
    card, operation_id = start_task(page, documents=8, seconds_per_document=0.25)
    expect(card.locator(".badge")).to_have_text("completed", timeout=30_000)
    expect(card.locator(".percent")).to_have_text("100 %")
    percents = page.evaluate("window.__percents")
    assert [text for text in percents if text not in ("0 %", "100 %")], f"no intermediate percentage: {percents}"
    stored = [entry_id for entry_id, _ in redis_client.xrange(KeySpace(key_prefix).stream(operation_id))]
    assert card.evaluate("card => card.receivedIds") == stored
    wait_for_full_bar(card)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "django-browser-completed.png"), full_page=True)

    other = logged_in_page(browser, django_stack, "other")
    assert other.locator("article").count() == 0  # the page lists only the user's own jobs
    closed = other.evaluate(
        """async (operationId) => {
             const { subscribe } = await import("/progress/client.js");
             const info = await subscribe(operationId, { maxRetries: 0 }).done;
             return { reason: info.reason, code: info.code };
           }""",
        operation_id,
    )
    assert closed == {"reason": "refused", "code": 1008}


def test_cancel_from_the_django_page_shows_cancelled(browser: Any, django_stack: DjangoStack) -> None:
    """The page's cancel button (a same-origin POST with the session cookie) revokes the running task on the worker,
    and the bar shows `cancelled`."""
    from playwright.sync_api import expect

    page = logged_in_page(browser, django_stack, "demo")
    card, _ = start_task(page, documents=40, seconds_per_document=0.5)
    expect(card.locator(".badge")).to_have_text("started", timeout=30_000)
    card.locator(".cancel").click()
    expect(card.locator(".badge")).to_have_text("cancelled", timeout=30_000)
