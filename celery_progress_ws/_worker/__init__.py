"""The worker half: the Celery bootstep and signals, ``report_progress`` and the publisher."""
