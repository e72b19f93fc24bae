"""The example's Django app: its ``Job`` model and views."""

from __future__ import annotations

from django.apps import AppConfig


class DjangoSiteConfig(AppConfig):
    name = "example_project.django_site"
    label = "django_site"
    default_auto_field = "django.db.models.BigAutoField"
