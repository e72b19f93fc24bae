"""The example Django project running for real: its database set up, a prefork worker and uvicorn serving
``ProgressDispatcher`` (Django and the progress routes), all subprocesses; and a logged-in HTTP client of it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from devtools.processes import OwnedProcess, free_port, http_ok
from devtools.servers import forget_celery_queue
from example_project.demo import uvicorn_flags

ROOT = Path(__file__).resolve().parent.parent.parent
ASGI_APP = "example_project.django_site.asgi:application"
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class DjangoStack:
    """Sets up the example's SQLite database and demo users, starts the worker and web processes, stops them."""

    def __init__(self, redis_url: str, key_prefix: str, directory: Path) -> None:
        self.directory = directory
        self.env = {
            **os.environ,
            "CELERY_PROGRESS_WS_REDIS_URL": redis_url,
            "CELERY_PROGRESS_WS_KEY_PREFIX": key_prefix,
            "DEMO_QUEUE": f"cpws-django-{uuid.uuid4().hex[:8]}",
            "DJANGO_DEMO_DB": str(directory / "django.sqlite3"),
            "DJANGO_SETTINGS_MODULE": "example_project.django_site.settings",
        }
        self.processes: list[OwnedProcess] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        subprocess.run([sys.executable, "-m", "django", "demo_setup"], cwd=ROOT, env=self.env, check=True, timeout=60)
        self._spawn(
            "worker",
            "-m", "celery", "-A", "example_project.tasks", "worker", "--pool=prefork", "--concurrency=2",
            "--loglevel=INFO", f"--hostname=django-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
        )  # fmt: skip
        self.port = self.start_web("web")

    def start_web(self, name: str, *flags: str) -> int:
        """Another uvicorn process of the combined application on a free port (same database, Redis and queue)."""
        port = free_port()
        web = self._spawn(
            name, "-m", "uvicorn", ASGI_APP, "--host", "127.0.0.1", "--port", str(port), *uvicorn_flags(), *flags
        )
        web.wait_until(lambda: http_ok(port, "/login/"), 30, "the Django example")
        return port

    def process(self, name: str) -> OwnedProcess:
        return next(process for process in self.processes if process.log == self.directory / f"{name}.log")

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(20)
        forget_celery_queue(self.env["CELERY_PROGRESS_WS_REDIS_URL"], self.env["DEMO_QUEUE"])

    def _spawn(self, name: str, *args: str) -> OwnedProcess:
        process = OwnedProcess([sys.executable, *args], cwd=ROOT, env=self.env, log=self.directory / f"{name}.log")
        self.processes.append(process)
        return process


class DjangoUser:
    """An HTTP client of the example that logged in through Django's login view; its cookies carry the session."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=15)
        login = self.client.get("/login/")
        token = _csrf_input(login.text)
        answer = self.client.post(
            "/login/", data={"username": username, "password": password, "csrfmiddlewaretoken": token}
        )
        if answer.status_code != 302:
            raise RuntimeError(f"login of {username} answered {answer.status_code}")

    @property
    def cookie_header(self) -> str:
        """The ``Cookie`` header a browser would send with this user's WebSocket handshakes."""
        return "; ".join(f"{name}={value}" for name, value in self.client.cookies.items())

    def start_task(self, documents: int = 4, seconds_per_document: float = 0.1) -> str:
        """Start the example ``ingest`` task from the page's API (with Django's CSRF token); its operation id."""
        token = _csrf_input(self.client.get("/").text)
        answer = self.client.post(
            "/api/tasks",
            json={"documents": documents, "seconds_per_document": seconds_per_document},
            headers={"X-CSRFToken": token},
        )
        answer.raise_for_status()
        return str(answer.json()["operation_id"])

    def close(self) -> None:
        self.client.close()


def _csrf_input(html: str) -> str:
    found = CSRF_INPUT.search(html)
    if found is None:
        raise RuntimeError("no CSRF token in the page")
    return found.group(1)
