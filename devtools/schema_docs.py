"""Generates docs/wire-schema.md, the JSON Schema of every message, from the shared pydantic schemas.

Run ``python -m devtools.schema_docs`` to rewrite it; tests/test_docs.py fails when it is out of date.
"""

from __future__ import annotations

from pathlib import Path

from celery_progress_ws._core.schemas import wire_json_schema_text

TARGET = Path(__file__).resolve().parent.parent / "docs" / "wire-schema.md"

HEADER = """# Wire format: JSON Schema

Generated from the pydantic models in `celery_progress_ws` (the same ones both halves use). Print it with
`celery-progress-ws schema`, or get it as a dict from `celery_progress_ws.wire_json_schema()`. The browser client's
TypeScript declarations (`/progress/client.d.ts`) are generated from the same models.

"""


def render() -> str:
    """The page: a short introduction and the schema as a JSON block."""
    return HEADER + "```json\n" + wire_json_schema_text() + "\n```\n"


if __name__ == "__main__":
    TARGET.write_text(render())
    print(f"wrote {TARGET}")
