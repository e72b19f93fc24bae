"""A complete example: a Celery app reporting progress and a FastAPI app showing it live in the browser."""
