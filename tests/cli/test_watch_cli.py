"""The ``watch`` command line: usage errors exit 64 (never 2, the ``cancelled`` status), and it can be a sub-command."""

from __future__ import annotations

import argparse
import io

import pytest

from celery_progress_ws._cli.watch import EXIT_USAGE
from celery_progress_ws._cli.watch_cli import add_watch_parser, main, run_watch


@pytest.mark.parametrize("bad", ["has space", "glob*", "", "x" * 129])
def test_invalid_operation_id_exits_64(bad: str) -> None:
    """An operation id that cannot be a Redis key is refused with a clear message and exit 64, before any I/O."""
    err = io.StringIO()
    assert main([bad, "--json"], stdout=io.StringIO(), stderr=err) == EXIT_USAGE
    assert "operation id" in err.getvalue()


def test_usage_errors_exit_64_not_2(capsys: pytest.CaptureFixture[str]) -> None:
    """A usage error exits 64, so a script never mistakes it for the `cancelled` status 2."""
    with pytest.raises(SystemExit) as exited:
        main(["op", "--timeout", "-1"])
    assert exited.value.code == EXIT_USAGE
    assert "--timeout" in capsys.readouterr().err


def test_registered_subcommand_parses_and_keeps_exit_64_for_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """Registered on a plain argparse parent, `watch` maps to run_watch and still exits 64 on a usage error."""
    parent = argparse.ArgumentParser(prog="celery-progress-ws")
    add_watch_parser(parent.add_subparsers(required=True))
    args = parent.parse_args(["watch", "a", "b", "--json", "--timeout", "2"])
    assert (args.handler, args.operation_ids, args.json_lines, args.timeout) == (run_watch, ["a", "b"], True, 2.0)
    assert args.handler(parent.parse_args(["watch", "bad*id"])) == EXIT_USAGE
    with pytest.raises(SystemExit) as exited:
        parent.parse_args(["watch"])
    assert exited.value.code == EXIT_USAGE
    assert "OPERATION_ID" in capsys.readouterr().err
