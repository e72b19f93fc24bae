"""`queued` entries from a process that only sends tasks (a web app), and which app's settings they use."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_progress_ws import ProgressPublisher, ProgressSettings, enable_queued_events
from celery_progress_ws._worker import signals as _signals
from celery_progress_ws._worker.signals import disable_events, enable_worker_events
from tests.support.streams import read, statuses
from tests.support.worker_tasks import close_app, create_app

pytestmark = pytest.mark.integration


@pytest.fixture
def sender(redis_url: str, broker_namespace: str) -> Iterator[Celery]:
    """An app that sends to a queue nobody consumes (its messages are deleted with the session's broker keys).

    Apps other tests enabled in this process (e.g. the docs' examples, kept alive by Celery's shared tasks) are set
    aside meanwhile: these tests are about which of the enabled apps writes `queued`.
    """
    others = dict(_signals._bindings)
    _signals._bindings.clear()
    app = create_app(redis_url, broker_namespace, f"{broker_namespace}-nobody")
    try:
        yield app
    finally:
        disable_events(app)
        close_app(app)
        _signals._bindings.update(others)


def test_enabled_app_writes_queued_when_a_task_is_sent(
    sender: Celery, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """After enable_queued_events(app), sending a task (also by name) writes `queued` before the message leaves."""
    with enable_queued_events(sender, settings):
        by_object = sender.tasks["cpws.count"].delay(1)
        by_name = sender.send_task("somewhere.else", args=(1,))
    for task_id in (by_object.id, by_name.id):
        [entry] = read(redis_client, settings, task_id)
        assert entry["data"] == {"status": "queued", "task_name": entry["data"]["task_name"], "message": "Task queued"}
    assert read(redis_client, settings, by_name.id)[0]["data"]["task_name"] == "somewhere.else"


def test_with_two_enabled_apps_the_one_that_knows_the_task_is_used(
    redis_url: str, broker_namespace: str, sender: Celery, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """Several enabled apps: the app that registers the task writes `queued`; an unknown task name gets none."""
    other = Celery("other", broker=redis_url, set_as_current=False)
    other.conf.update(task_default_queue=f"{broker_namespace}-nobody", broker_connection_retry_on_startup=True,
                      broker_transport_options={"global_keyprefix": f"{broker_namespace}:"})  # fmt: skip
    other_settings = ProgressSettings(redis_url=redis_url, key_prefix=settings.key_prefix + "other:")
    sender.finalize()
    with enable_queued_events(sender, settings), enable_queued_events(other, other_settings):
        try:
            known = other.send_task("cpws.count", args=(1,))
            unknown = other.send_task(f"unknown.{uuid.uuid4().hex}")
        finally:
            disable_events(other)
            close_app(other)
    assert statuses(read(redis_client, settings, known.id)) == ["queued"]
    assert read(redis_client, other_settings, known.id) == []
    assert read(redis_client, settings, unknown.id) == read(redis_client, other_settings, unknown.id) == []


def test_a_worker_with_publish_queued_off_writes_no_queued_entries(
    sender: Celery, settings: ProgressSettings, redis_client: redis.Redis
) -> None:
    """With publish_queued=False, enabling a worker's events leaves tasks it sends without a `queued` entry."""
    quiet = settings.model_copy(update={"publish_queued": False})
    with ProgressPublisher(quiet) as publisher:
        enable_worker_events(sender, publisher)
        result = sender.tasks["cpws.count"].delay(1)
    assert read(redis_client, settings, result.id) == []
