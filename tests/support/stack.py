"""The example project running for real: a prefork Celery worker and a uvicorn web process, both subprocesses."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

from devtools.processes import OwnedProcess, free_port, http_ok
from devtools.servers import forget_celery_queue
from example_project.demo import uvicorn_flags

ROOT = Path(__file__).resolve().parent.parent.parent


class ExampleStack:
    """Starts and stops the example worker and web app (``env``: more environment for both, settings for instance);
    the web app can be restarted on the same port."""

    def __init__(self, redis_url: str, key_prefix: str, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            "CELERY_PROGRESS_WS_REDIS_URL": redis_url,
            "CELERY_PROGRESS_WS_KEY_PREFIX": key_prefix,
            "DEMO_QUEUE": f"cpws-e2e-{uuid.uuid4().hex[:8]}",
            **(env or {}),
        }
        self.worker: OwnedProcess | None = None
        self.web: OwnedProcess | None = None

    def start(self) -> None:
        self.worker = self._spawn(
            "worker",
            "-m", "celery", "-A", "example_project.tasks", "worker", "--pool=prefork", "--concurrency=2",
            "--loglevel=INFO", f"--hostname=e2e-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
        )  # fmt: skip
        self.start_web()

    def start_web(self) -> None:
        self.web = self._spawn(
            "web", "-m", "uvicorn", "example_project.web:create_app", "--factory", "--host", "127.0.0.1",
            "--port", str(self.port), *uvicorn_flags(),
        )  # fmt: skip
        self.web.wait_until(lambda: http_ok(self.port, "/openapi.json"), 30, "the example web app")

    def restart_web(self) -> None:
        """Stop the web process (SIGTERM, as a deploy would) and start a new one on the same port."""
        if self.web is not None:
            self.web.stop(20)
        self.start_web()

    def stop(self) -> None:
        for process in (self.web, self.worker):
            if process is not None:
                process.stop(20)
        forget_celery_queue(self.env["CELERY_PROGRESS_WS_REDIS_URL"], self.env["DEMO_QUEUE"])

    def web_log(self) -> str:
        """What the web process has printed so far (uvicorn's access log included)."""
        return (self.log_dir / "web.log").read_text(errors="replace")

    def _spawn(self, name: str, *args: str) -> OwnedProcess:
        return OwnedProcess([sys.executable, *args], cwd=ROOT, env=self.env, log=self.log_dir / f"{name}.log")
