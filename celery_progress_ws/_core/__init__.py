"""The shared core of both halves: settings, keys, wire format, codec, throttle and the append script.

It imports neither Celery nor FastAPI.
"""
