"""What a Celery app's configuration says about progress: its settings and, optionally, the Redis client to use."""

from __future__ import annotations

from collections.abc import Mapping

import redis
from celery import Celery
from redis.cluster import RedisCluster

from .._core.settings import ProgressSettings
from .connection import ClientSource

CONF_KEY = "celery_progress_ws"
CLIENT_CONF_KEY = "celery_progress_ws_client"


def settings_for_app(app: Celery) -> ProgressSettings:
    """``app.conf.celery_progress_ws`` (settings or a mapping of fields, the rest from the environment), else env."""
    configured = app.conf.get(CONF_KEY)
    if configured is None:
        return ProgressSettings()
    if isinstance(configured, ProgressSettings):
        return configured
    if isinstance(configured, Mapping):
        return ProgressSettings(**configured)
    raise TypeError(f"app.conf.{CONF_KEY} must be a ProgressSettings or a mapping, not {type(configured).__name__}")


def client_for_app(app: Celery) -> ClientSource | None:
    """``app.conf.celery_progress_ws_client``: a ``redis.Redis`` or ``RedisCluster`` the app's publishers share, or a
    factory each process calls once to make its own; ``None`` (the default) to connect from the settings' URL."""
    configured = app.conf.get(CLIENT_CONF_KEY)
    if configured is None or isinstance(configured, (redis.Redis, RedisCluster)) or callable(configured):
        return configured  # type: ignore[no-any-return]
    raise TypeError(
        f"app.conf.{CLIENT_CONF_KEY} must be a redis.Redis, a RedisCluster or a function returning one, "
        f"not {type(configured).__name__}"
    )
