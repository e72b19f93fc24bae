"""The ``celery-progress-ws`` command line: ``watch`` and ``schema``."""
