"""End to end in a real headless Chromium: the example page, served by uvicorn, fed by a real prefork worker."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_progress_ws._core.keys import KeySpace
from tests.support.other_origin import OtherOriginSite
from tests.support.stack import ExampleStack

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RECORD_PERCENTAGES = """
window.__percents = [];
new MutationObserver((mutations) => {
  for (const mutation of mutations) {
    const node = mutation.target.nodeType === Node.TEXT_NODE ? mutation.target.parentElement : mutation.target;
    if (node && node.classList && node.classList.contains("percent")) window.__percents.push(node.textContent);
  }
}).observe(document, { subtree: true, childList: true, characterData: true });
"""

if CHROMIUM is None:  # pragma: no cover - dev.py installs it wherever it can
    pytest.skip(
        "BROWSER TEST NOT RUN: Debian's chromium is not installed (python3 dev.py test installs it when run as root)",
        allow_module_level=True,
    )


@pytest.fixture
def page(stack: ExampleStack) -> Iterator[Any]:
    """A fresh Chromium page on the example app's home page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1100, "height": 900})
            context.add_init_script(RECORD_PERCENTAGES)
            page = context.new_page()
            page.goto(stack.base_url + "/")
            yield page
        finally:
            browser.close()


def start_task(page: Any, kind: str, documents: int, seconds_per_document: float) -> Any:
    """Fill the form, start a task and return its card."""
    page.select_option("select[name=kind]", kind)
    page.fill("input[name=documents]", str(documents))
    page.fill("input[name=seconds_per_document]", str(seconds_per_document))
    with page.expect_response("**/api/tasks") as response_info:
        page.click("#start-button")
    operation_id = response_info.value.json()["operation_id"]
    return page.locator(f'article[data-operation-id="{operation_id}"]'), operation_id


def stream_ids(client: redis.Redis, key_prefix: str, operation_id: str) -> list[str]:
    """Every entry id in the operation's stream, oldest first."""
    return [entry_id for entry_id, _ in client.xrange(KeySpace(key_prefix).stream(operation_id))]


def wait_for_full_bar(card: Any) -> None:
    """Wait until the bar's width animation has reached 100 %, so a screenshot shows what the text says."""
    card.page.wait_for_function(
        "card => card.querySelector('.fill').getBoundingClientRect().width"
        " >= card.querySelector('.bar').getBoundingClientRect().width - 1",
        arg=card.element_handle(),
        timeout=5_000,
    )


def received_ids(card: Any) -> list[str]:
    return list(card.evaluate("card => card.receivedIds"))


def test_task_progress_reaches_100_percent_and_completed(page: Any, redis_client: redis.Redis, key_prefix: str) -> None:
    """A task started from the page shows intermediate percentages, ends at 100 % completed, and the page got every
    stream entry exactly once."""
    from playwright.sync_api import expect

    card, operation_id = start_task(page, "ingest", documents=8, seconds_per_document=0.25)
    expect(card.locator(".badge")).to_have_text("completed", timeout=30_000)
    expect(card.locator(".percent")).to_have_text("100 %")
    percents = page.evaluate("window.__percents")
    intermediate = [text for text in percents if text not in ("0 %", "100 %")]
    assert intermediate, f"no intermediate percentage was shown: {percents}"
    assert received_ids(card) == stream_ids(redis_client, key_prefix, operation_id)
    wait_for_full_bar(card)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-completed.png"), full_page=True)


def test_cancel_from_the_page_shows_cancelled(page: Any) -> None:
    """Cancelling a running task from the page revokes it on the worker, and the page shows `cancelled`."""
    from playwright.sync_api import expect

    card, _ = start_task(page, "ingest", documents=40, seconds_per_document=0.5)
    expect(card.locator(".badge")).to_have_text("started", timeout=30_000)
    card.locator(".cancel").click()
    expect(card.locator(".badge")).to_have_text("cancelled", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-cancelled.png"), full_page=True)


def test_page_resumes_after_web_server_restart(
    page: Any, stack: ExampleStack, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Restarting the web server mid-task: the page reconnects, resumes and ends with every entry exactly once."""
    from playwright.sync_api import expect

    card, operation_id = start_task(page, "ingest", documents=16, seconds_per_document=0.4)
    page.wait_for_function("card => card.receivedIds.length >= 4", arg=card.element_handle(), timeout=30_000)
    stack.restart_web()
    expect(card.locator(".badge")).to_have_text("completed", timeout=60_000)
    received = received_ids(card)
    assert len(received) == len(set(received)), "an entry was delivered twice"
    assert received == stream_ids(redis_client, key_prefix, operation_id)
    wait_for_full_bar(card)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-after-restart.png"), full_page=True)


def test_group_shows_aggregate_progress_and_completes(page: Any) -> None:
    """A group started from the page is one operation whose bar moves through intermediate values to 100 %."""
    from playwright.sync_api import expect

    card, _ = start_task(page, "group", documents=8, seconds_per_document=0.2)
    expect(card.locator(".badge")).to_have_text("completed", timeout=30_000)
    expect(card.locator(".percent")).to_have_text("100 %")
    expect(card.locator(".document")).to_contain_text("4/4 tasks done")
    wait_for_full_bar(card)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-group.png"), full_page=True)


def test_a_page_on_another_origin_is_refused_while_the_apps_own_page_works(page: Any, stack: ExampleStack) -> None:
    """A page on another origin of the same site (so the browser sends the user's SameSite=Strict cookie) cannot open
    the WebSocket or EventSource, read the snapshot or cancel: each gets 403, and the app's own page still watches
    the task to `completed`."""
    from playwright.sync_api import expect

    card, operation_id = start_task(page, "ingest", documents=12, seconds_per_document=0.25)
    expect(card.locator(".badge")).to_have_text("started", timeout=30_000)
    with OtherOriginSite() as site:
        other = page.context.new_page()
        other.goto(f"{site.base_url}/?app={stack.base_url}&op={operation_id}")
        other.wait_for_function("window.__results !== undefined", timeout=20_000)
        results = other.evaluate("window.__results")
    assert results["socket"] == {"opened": False, "code": 1006}
    assert results["events"] == {"opened": False}
    assert results["cancel"] == {"type": "opaque"}  # the browser hides the answer from the page
    assert "error" in results["snapshot"]  # and this one for want of CORS headers
    refused = re.findall(rf'"(\w+) /progress/operations/{operation_id}(/\w+)?[ "].* 403', stack.web_log())
    assert sorted(refused) == [("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("WebSocket", "/ws")]
    expect(card.locator(".badge")).to_have_text("completed", timeout=30_000)
