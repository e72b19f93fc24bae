"""Integrations of the web half with frameworks other than FastAPI, each installed with its own extra."""
