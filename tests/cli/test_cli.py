"""The celery-progress-ws command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celery_progress_ws import wire_json_schema
from celery_progress_ws._cli.main import COMMANDS, build_parser, main


def test_schema_prints_the_wire_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`celery-progress-ws schema` prints the JSON Schema of the wire format."""
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == wire_json_schema()


def test_schema_can_write_a_file(tmp_path: Path) -> None:
    """`schema -o FILE` writes the schema to FILE."""
    target = tmp_path / "wire.schema.json"
    assert main(["schema", "-o", str(target)]) == 0
    assert json.loads(target.read_text()) == wire_json_schema()


def test_a_command_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a sub-command the usage is printed and the exit status is 2."""
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_sub_commands_are_registered_by_functions() -> None:
    """Every registration function in COMMANDS contributes one sub-command (how `watch` will be added)."""
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert len(choices) == len(COMMANDS)
    assert "schema" in choices
