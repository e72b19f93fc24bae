"""``python -m django demo_setup``: create the example's database and its demo users (idempotent)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

DEMO_USERS = {"demo": "demo", "other": "other"}
"""Username -> password of the users the demo creates; ``other`` shows that a user sees only their own jobs."""


class Command(BaseCommand):
    help = "Migrate the example's database and create its demo users."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        users = get_user_model()
        for username, password in DEMO_USERS.items():
            user, _ = users.objects.get_or_create(username=username)
            user.set_password(password)
            user.save()
        self.stdout.write(f"users: {', '.join(f'{name}/{password}' for name, password in DEMO_USERS.items())}")
