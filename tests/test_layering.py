"""The package's layers: the shared core at the bottom, the worker half, aggregates and the CLI on it, the web half on
top and the framework integrations (contrib) on the web half; each imports only from below, and the frameworks only
where they belong."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "celery_progress_ws"

MAY_IMPORT = {
    "_core": {"_core"},
    "_aggregate": {"_core", "_aggregate"},
    "_worker": {"_core", "_aggregate", "_worker"},
    "_cli": {"_core", "_cli"},
    "web": {"_core", "_aggregate", "web"},
    "contrib": {"_core", "web", "contrib"},
    "": {"_core", "_aggregate", "_worker"},
}
"""Layer -> the layers its modules may import from (``""`` is the package's ``__init__``)."""

FORBIDDEN_THIRD_PARTY = {
    "_core": {"celery", "kombu", "fastapi", "starlette", "uvicorn", "django"},
    "_aggregate": {"fastapi", "starlette", "uvicorn", "django"},
    "_worker": {"fastapi", "starlette", "uvicorn", "django"},
    "_cli": {"celery", "kombu", "fastapi", "starlette", "uvicorn", "django"},
    "web": {"django"},
    "": {"fastapi", "starlette", "uvicorn", "django"},
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def layer_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def imported(path: Path) -> tuple[set[str], set[str]]:
    """The package layers and the third-party top-level packages that ``path`` imports (at any depth of the file)."""
    relative_parts = path.relative_to(PACKAGE).with_suffix("").parts
    package_parts = list(relative_parts[:-1])  # a module's package; for an __init__, the package itself
    layers: set[str] = set()
    third_party: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = package_parts[: len(package_parts) - (node.level - 1)]
            target = [*base, *(node.module.split(".") if node.module else [])]
            if target:
                layers.add(target[0])
            else:  # ``from . import x`` at the package root: x is the layer
                layers.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            third_party.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            third_party.update(alias.name.split(".")[0] for alias in node.names)
    return layers, third_party


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_each_module_imports_only_from_its_own_layer_or_below(path: Path) -> None:
    """core <- aggregate <- worker, core <- cli, core/aggregate <- web: no module imports a layer above its own."""
    layer = layer_of(path)
    layers, third_party = imported(path)
    assert layers <= MAY_IMPORT[layer], f"{path.name} ({layer or 'root'}) imports {sorted(layers - MAY_IMPORT[layer])}"
    forbidden = third_party & FORBIDDEN_THIRD_PARTY.get(layer, set())
    assert not forbidden, f"{path.name} ({layer or 'root'}) imports {sorted(forbidden)}"


def test_the_worker_half_imports_without_the_web_frameworks() -> None:
    """``import celery_progress_ws`` (worker half, aggregates) works in a process where FastAPI and Django cannot be
    imported."""
    code = (
        "import sys\n"
        "for name in ('fastapi', 'starlette', 'uvicorn', 'django'):\n"
        "    sys.modules[name] = None\n"
        "import celery_progress_ws\n"
        "from celery_progress_ws._cli import main\n"
        "assert not any(name.startswith('celery_progress_ws.web') for name in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=PACKAGE.parent)


def test_the_web_half_imports_without_django() -> None:
    """``import celery_progress_ws.web`` works where Django cannot be imported: only ``contrib.django`` needs it."""
    code = (
        "import sys\nsys.modules['django'] = None\nimport celery_progress_ws.web\nimport celery_progress_ws.contrib\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=PACKAGE.parent)
