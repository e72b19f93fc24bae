"""The example project running for real: a prefork Celery worker and a uvicorn web process, both subprocesses."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from devtools.servers import forget_celery_queue, free_port
from example_project.demo import uvicorn_flags

ROOT = Path(__file__).resolve().parent.parent.parent


class ExampleStack:
    """Starts and stops the example worker and web app; the web app can be restarted on the same port."""

    def __init__(self, redis_url: str, key_prefix: str, log_dir: Path) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            "CELERY_PROGRESS_WS_REDIS_URL": redis_url,
            "CELERY_PROGRESS_WS_KEY_PREFIX": key_prefix,
            "DEMO_QUEUE": f"cpws-e2e-{uuid.uuid4().hex[:8]}",
        }
        self.worker: subprocess.Popen[bytes] | None = None
        self.web: subprocess.Popen[bytes] | None = None

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
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.web.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the example web app did not start; see {self.log_dir / 'web.log'}")
            time.sleep(0.05)

    def restart_web(self) -> None:
        """Stop the web process (SIGTERM, as a deploy would) and start a new one on the same port."""
        self._stop(self.web)
        self.start_web()

    def stop(self) -> None:
        self._stop(self.web)
        self._stop(self.worker)
        forget_celery_queue(self.env["CELERY_PROGRESS_WS_REDIS_URL"], self.env["DEMO_QUEUE"])

    def web_log(self) -> str:
        """What the web process has printed so far (uvicorn's access log included)."""
        return (self.log_dir / "web.log").read_text(errors="replace")

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", "/openapi.json")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    @staticmethod
    def _stop(process: subprocess.Popen[bytes] | None) -> None:
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
