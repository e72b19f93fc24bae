"""The app a real ``celery -A tests.support.worker_app worker`` subprocess runs; configured by environment variables.

``CPWS_TEST_BROKER_URL``, ``CPWS_TEST_NAMESPACE`` and ``CPWS_TEST_QUEUE`` place the broker; the progress settings come
from ``CELERY_PROGRESS_WS_*``, as in a deployment that does not set ``app.conf.celery_progress_ws``.
"""

from __future__ import annotations

import os

from tests.support.worker_tasks import create_app

app = create_app(os.environ["CPWS_TEST_BROKER_URL"], os.environ["CPWS_TEST_NAMESPACE"], os.environ["CPWS_TEST_QUEUE"])
