"""Generates docs/configuration.md from ProgressSettings, so the reference can never drift from the code.

Run ``python -m devtools.config_docs`` to rewrite it; tests/test_docs.py fails when it is out of date.
"""

from __future__ import annotations

from pathlib import Path

from celery_progress_ws import ProgressSettings

TARGET = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

HEADER = """# Configuration reference

Every setting lives on one `ProgressSettings` object (pydantic-settings). It reads environment variables
with the prefix `CELERY_PROGRESS_WS_`, or takes keyword arguments:

```python
from celery_progress_ws import ProgressSettings

settings = ProgressSettings(redis_url="redis://cache:6379/2", key_prefix="myapp:", throttle_seconds=1.0)
```

- Worker side: set `app.conf.celery_progress_ws = settings` (an instance or a mapping) before the worker starts;
  otherwise `ProgressBootstep` builds `ProgressSettings()` from the environment. To use a Redis client of your own
  instead of one built from `redis_url`, set `app.conf.celery_progress_ws_client` to a `redis.Redis`, a
  `redis.cluster.RedisCluster`, or a function returning one (called once in each worker process, after the fork);
  the bootstep and `enable_queued_events(app)` use it.
- Web side: `ProgressManager(settings=settings)`; without it, `ProgressSettings()` from the environment.

Both halves must agree on `redis_url` and `key_prefix`.

| setting | environment variable | default | meaning |
| --- | --- | --- | --- |
"""


def render() -> str:
    """The Markdown reference table, one row per field of ProgressSettings."""
    prefix = ProgressSettings.model_config.get("env_prefix", "")
    rows = []
    for name, field in ProgressSettings.model_fields.items():
        default = field.default
        shown = f"`{default!r}`" if not isinstance(default, str) else f'`"{default}"`'
        rows.append(f"| `{name}` | `{prefix}{name.upper()}` | {shown} | {field.description or ''} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
