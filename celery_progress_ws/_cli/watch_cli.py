"""The ``watch`` command line: arguments, exit statuses and wiring of settings, sink and ``Watcher``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, NoReturn, TextIO

from pydantic import ValidationError

from .._core.errors import InvalidOperationId
from .._core.keys import validate_operation_id
from .._core.settings import ProgressSettings
from .output import PROG, JsonSink, RichSink, Sink
from .watch import EXIT_INTERRUPTED, EXIT_UNAVAILABLE, EXIT_USAGE, Watcher

DESCRIPTION = "Follow operations straight from Redis: history first, then live, until each reaches a final status."
EPILOG = """\
exit status:
  0   every operation completed
  1   an operation failed
  2   an operation was cancelled (and none failed)
  3   --timeout passed before every operation ended
  64  invalid operation id, option or setting
  69  Redis refused the watcher (authentication, permissions, a key of the wrong type)
  130 interrupted
"""


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the watch command's arguments to ``parser``."""
    parser.add_argument("operation_ids", nargs="+", metavar="OPERATION_ID", help="operation (task) ids to follow")
    parser.add_argument("--redis-url", help="Redis holding the streams (default: CELERY_PROGRESS_WS_REDIS_URL)")
    parser.add_argument("--key-prefix", help="key prefix used by the workers (default: CELERY_PROGRESS_WS_KEY_PREFIX)")
    parser.add_argument(
        "--json", dest="json_lines", action="store_true", help="print each entry as one JSON line instead of bars"
    )
    parser.add_argument(
        "--timeout", type=_positive_seconds, metavar="SECONDS", help="give up (exit 3) after this many seconds"
    )
    return parser


def add_watch_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``watch`` on a console script's sub-commands (argparse's ``_SubParsersAction``).

    Its ``handler`` default is ``run_watch``. Usage errors exit with 64 rather than argparse's 2, which is the
    ``cancelled`` status.
    """
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "watch",
        help="follow operations' progress straight from Redis",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)
    setattr(parser, "error", partial(_usage_error, parser))  # noqa: B010 - an instance override, not a typo
    parser.set_defaults(handler=run_watch)
    return parser


def _usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.print_usage(sys.stderr)
    parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message}\n")


def run_watch(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the watch command for parsed ``args``; return its exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr

    def fail(text: str, status: int = EXIT_USAGE) -> int:
        err.write(f"{PROG}: {text}\n")
        return status

    try:
        operation_ids = [validate_operation_id(value) for value in dict.fromkeys(args.operation_ids)]
    except InvalidOperationId as exc:
        return fail(str(exc))
    overrides = {name: value for name in ("redis_url", "key_prefix") if (value := getattr(args, name)) is not None}
    try:
        settings = ProgressSettings(**overrides)
    except ValidationError as exc:
        return fail(f"invalid setting: {exc}")
    sink: Sink
    if args.json_lines:
        sink = JsonSink(out, err)
    else:
        try:
            sink = RichSink(operation_ids, out)
        except ImportError:
            return fail(
                "progress bars need rich: pip install 'celery-progress-ws[cli]' (or use --json)", EXIT_UNAVAILABLE
            )
    try:
        watcher = Watcher(settings, operation_ids, sink, timeout=args.timeout)
    except ValueError as exc:  # an unusable Redis URL
        sink.close()
        return fail(f"invalid Redis URL: {exc}")
    try:
        return watcher.run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        sink.close()


class _UsageParser(argparse.ArgumentParser):
    """Exits with 64 on a usage error, so it is never mistaken for the ``cancelled`` status 2."""

    def error(self, message: str) -> NoReturn:
        _usage_error(self, message)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """The watch command on its own: ``main(["OPERATION_ID", "--json"])``."""
    parser = configure_parser(
        _UsageParser(
            prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    return run_watch(parser.parse_args(argv), stdout=stdout, stderr=stderr)
