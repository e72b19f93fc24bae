"""The app a real ``celery -A tests.support.worker_app worker`` subprocess runs; configured by environment variables.

``CPWS_TEST_BROKER_URL``, ``CPWS_TEST_NAMESPACE`` and ``CPWS_TEST_QUEUE`` place the broker; the progress settings come
from ``CELERY_PROGRESS_WS_*``, as in a deployment that does not set ``app.conf.celery_progress_ws``. With
``CPWS_TEST_PROGRESS_CLIENT_URL`` the app gives its publishers a client factory for that URL
(``app.conf.celery_progress_ws_client``) instead.
"""

from __future__ import annotations

import functools
import os

import redis

from tests.support.worker_tasks import create_app

app = create_app(os.environ["CPWS_TEST_BROKER_URL"], os.environ["CPWS_TEST_NAMESPACE"], os.environ["CPWS_TEST_QUEUE"])
if "CPWS_TEST_PROGRESS_CLIENT_URL" in os.environ:
    app.conf.celery_progress_ws_client = functools.partial(
        redis.Redis.from_url, os.environ["CPWS_TEST_PROGRESS_CLIENT_URL"]
    )
