"""Aggregate operations: ``track()`` and the Lua scripts that keep a group's progress in Redis."""
