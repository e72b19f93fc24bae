"""The documentation stays true to the code: generated references are current and every Python example runs."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from devtools import config_docs, schema_docs

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return PYTHON_BLOCK.findall(path.read_text())


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str) -> None:
    """Examples that build ``ProgressSettings()`` from the environment use this test's Redis and key prefix."""
    monkeypatch.setenv("CELERY_PROGRESS_WS_REDIS_URL", redis_url)
    monkeypatch.setenv("CELERY_PROGRESS_WS_KEY_PREFIX", key_prefix)


def test_configuration_reference_is_up_to_date() -> None:
    """docs/configuration.md lists every ProgressSettings field as generated (run `python -m devtools.config_docs`)."""
    assert config_docs.TARGET.read_text() == config_docs.render()


def test_wire_schema_page_is_up_to_date() -> None:
    """docs/wire-schema.md holds the current JSON Schema of the wire format (run `python -m devtools.schema_docs`)."""
    assert schema_docs.TARGET.read_text() == schema_docs.render()


@pytest.mark.integration
@pytest.mark.parametrize("path", [p for p in DOCUMENTS if python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(path: Path, settings_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each document's Python examples run top to bottom in one module, as a reader would paste them into one."""
    module = types.ModuleType(f"docs_{path.stem}")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # frameworks (Litestar) resolve annotations through it
    # The Django example sets it (setdefault); set here, it is removed again afterwards: left set, later Celery apps of
    # this process would load Celery's Django fixup, whose worker start reconfigures logging.
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", "example_project.django_site.settings")
    for block in python_blocks(path):
        exec(compile(block, str(path), "exec"), module.__dict__)
