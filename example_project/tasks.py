"""The example Celery app: the bootstep added, and document-ingestion tasks that report progress."""

from __future__ import annotations

import os
import time

from celery import Celery, Task

from celery_progress_ws import ProgressBootstep, ProgressSettings, report_progress, send_event


def create_celery_app() -> Celery:
    """The Celery app, with Redis (from ``CELERY_PROGRESS_WS_REDIS_URL``) as its broker."""
    settings = ProgressSettings()
    celery_app = Celery("example_project", broker=os.environ.get("DEMO_BROKER_URL", settings.redis_url))
    queue = os.environ.get("DEMO_QUEUE", "celery-progress-ws-demo")
    celery_app.conf.update(
        task_default_queue=queue,
        # Own control and event exchanges: on a shared Redis the demo worker then ignores other apps' broadcasts.
        control_exchange=queue,
        event_exchange=f"{queue}.ev",
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        celery_progress_ws=settings,
    )
    celery_app.steps["worker"].add(ProgressBootstep)
    return celery_app


app = create_celery_app()


def _ingest(documents: int, chunks_per_document: int, seconds_per_document: float, fail_at: int | None) -> int:
    """Split ``documents`` fake documents into chunks, reporting progress and events per document."""
    send_event("chunking_started", {"total_documents": documents, "strategy": "fixed-size"})
    chunks = 0
    for number in range(1, documents + 1):
        name = f"document-{number:03d}.pdf"
        send_event("chunking_document_start", {"document": name})
        if fail_at is not None and number == fail_at:
            raise RuntimeError(f"could not parse {name}: unexpected end of file")
        for _ in range(chunks_per_document):
            time.sleep(seconds_per_document / chunks_per_document)
            chunks += 1
        report_progress(number, documents, message=f"chunked {name}", current_document=name, chunks_created=chunks)
        send_event("chunking_document_complete", {"document": name, "chunks": chunks_per_document})
    send_event("chunking_completed", {"documents": documents, "chunks": chunks})
    return chunks


@app.task(name="example.ingest")
def ingest(documents: int = 12, chunks_per_document: int = 6, seconds_per_document: float = 0.5) -> int:
    """Ingest documents; completes."""
    return _ingest(documents, chunks_per_document, seconds_per_document, fail_at=None)


@app.task(name="example.ingest_failing")
def ingest_failing(documents: int = 12, chunks_per_document: int = 6, seconds_per_document: float = 0.5) -> int:
    """Ingest documents and fail half-way, as a corrupt file would."""
    return _ingest(documents, chunks_per_document, seconds_per_document, fail_at=documents // 2 + 1)


@app.task(name="example.ingest_retrying", bind=True, max_retries=1)
def ingest_retrying(
    self: Task, documents: int = 12, chunks_per_document: int = 6, seconds_per_document: float = 0.5
) -> int:
    """Fail on the first attempt with a transient error, retry once, then complete."""
    if self.request.retries == 0:
        report_progress(0, documents, message="source temporarily unavailable")
        raise self.retry(exc=ConnectionError("document store temporarily unavailable"), countdown=1)
    return _ingest(documents, chunks_per_document, seconds_per_document, fail_at=None)


TASKS = {"ingest": ingest, "failing": ingest_failing, "retrying": ingest_retrying}
