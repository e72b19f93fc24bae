"""The package's public surface is exactly its sorted ``__all__``."""

from __future__ import annotations

import types

import celery_progress_ws


def test_all_is_sorted_and_complete() -> None:
    """Every public attribute is listed in __all__, every listed name exists, and the list is sorted."""
    public = {
        name
        for name, value in vars(celery_progress_ws).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert set(celery_progress_ws.__all__) == public
    assert celery_progress_ws.__all__ == sorted(celery_progress_ws.__all__)


def test_public_names_come_from_private_modules() -> None:
    """Exports are defined in the package's private modules, not re-exported third-party objects."""
    for name in celery_progress_ws.__all__:
        module = getattr(getattr(celery_progress_ws, name), "__module__", "")
        assert module.startswith("celery_progress_ws._"), (name, module)
