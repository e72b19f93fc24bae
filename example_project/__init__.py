"""A complete example: a Celery app reporting progress, and a FastAPI app (``web``) and a Django project
(``django_site``) showing it live in the browser."""
