"""The example as a Django project: login, a page that starts the example ``ingest`` task and shows its bar, and
the progress routes served beside Django by ``ProgressDispatcher`` (``asgi.py``); the Celery app is
``example_project.tasks``.
"""
