"""The example's Django URLs; ``/progress/...`` never reaches them (``asgi.py`` sends it to the progress routes)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from . import views

urlpatterns = [
    path("", views.page, name="page"),
    path("login/", auth_views.LoginView.as_view(template_name="django_site/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/tasks", views.start_task, name="start-task"),
    path("api/jobs", views.jobs, name="jobs"),
]
