"""Who started which task: the progress routes let only a ``Job``'s owner watch its operation."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Job(models.Model):
    """One started task; ``operation_id`` is its Celery task id."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="jobs")
    operation_id = models.CharField(max_length=64, unique=True)
    documents = models.PositiveIntegerField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.operation_id} ({self.owner})"
