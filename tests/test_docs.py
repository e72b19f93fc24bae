"""The documentation stays true to the code."""

from __future__ import annotations

from devtools.config_docs import TARGET, render


def test_configuration_reference_is_up_to_date() -> None:
    """docs/configuration.md lists every ProgressSettings field as generated (run `python -m devtools.config_docs`)."""
    assert TARGET.read_text() == render()
