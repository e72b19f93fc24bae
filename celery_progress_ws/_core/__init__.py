"""The shared core of both halves: settings, keys, wire format, codec, policy, throttle, the append script, stream
reading (positions and the gap rule) and the one Redis client factory. It imports neither Celery nor FastAPI.
"""
