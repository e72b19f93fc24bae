"""The example's Django views: the page (login required), starting a task, and the user's jobs as JSON."""

from __future__ import annotations

import json
import uuid

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from example_project.tasks import ingest

from .models import Job

MAX_DOCUMENTS = 500


@login_required
@require_GET
def page(request: HttpRequest) -> HttpResponse:
    """The page: a form that starts an ingest task, and a live bar for each of the user's recent jobs."""
    jobs = [{"operation_id": job.operation_id, "documents": job.documents} for job in request.user.jobs.all()[:10]]
    return render(request, "django_site/page.html", {"jobs": jobs})


@login_required
@require_POST
def start_task(request: HttpRequest) -> HttpResponse:
    """Record a ``Job`` owned by the user, then start the example ``ingest`` task under the job's id."""
    try:
        body = json.loads(request.body or b"{}")
        documents = int(body.get("documents", 12))
        seconds = float(body.get("seconds_per_document", 0.5))
    except (ValueError, TypeError, AttributeError):
        return HttpResponseBadRequest("expected JSON with documents and seconds_per_document")
    if not (1 <= documents <= MAX_DOCUMENTS and 0 <= seconds <= 10):
        return HttpResponseBadRequest(f"documents must be 1..{MAX_DOCUMENTS}, seconds_per_document 0..10")
    job = Job.objects.create(owner=request.user, operation_id=uuid.uuid4().hex, documents=documents)
    ingest.apply_async(kwargs={"documents": documents, "seconds_per_document": seconds}, task_id=job.operation_id)
    return JsonResponse({"operation_id": job.operation_id}, status=201)


@login_required
@require_GET
def jobs(request: HttpRequest) -> JsonResponse:
    """The user's jobs, newest first."""
    rows = request.user.jobs.values("operation_id", "documents", "created")[:50]
    return JsonResponse({"user": request.user.get_username(), "jobs": list(rows)})
