"""The ``celery-progress-ws`` command: one sub-command per job, each registered by a small function.

To add one, write ``register(subcommands)`` that adds a parser whose ``handler`` default takes the
parsed arguments and returns an exit status, and append it to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .._core.schemas import wire_json_schema_text
from .ls_cli import add_ls_parser
from .watch_cli import add_watch_parser

Subcommands = Any  # argparse's private _SubParsersAction; not importable as a public type


def _register_schema(subcommands: Subcommands) -> None:
    parser = subcommands.add_parser(
        "schema", help="print the JSON Schema of the wire format", description="Print the wire format's JSON Schema."
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    parser.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    text = wire_json_schema_text() + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)
    return 0


COMMANDS: list[Callable[[Subcommands], object]] = [_register_schema, add_watch_parser, add_ls_parser]
"""Registration functions, one per sub-command."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command in ``COMMANDS``."""
    parser = argparse.ArgumentParser(prog="celery-progress-ws", description="celery-progress-ws tools.")
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``celery-progress-ws`` console script."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
