"""The ``ls`` command: a user's operations, newest first, read straight from their index in Redis.

It reads what ``GET /me/operations`` reads (the same ``PageBuilder``), as a table or one JSON line per operation.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import redis
from pydantic import ValidationError
from redis.cluster import RedisCluster

from .._core.clients import registration_client
from .._core.errors import InvalidCursor, InvalidStatusFilter
from .._core.history_pages import DEFAULT_PAGE, MAX_PAGE, PageBuilder, index_rows, parse_statuses
from .._core.keys import KeySpace, user_digest
from .._core.redis_errors import REDIS_FAILURES, describe
from .._core.schemas import TaskStatus
from .._core.settings import ProgressSettings
from .watch import EXIT_UNAVAILABLE, EXIT_USAGE

PROG = "celery-progress-ws ls"
COLUMNS = ("QUEUED", "STATUS", "PROGRESS", "TASK", "OPERATION", "MESSAGE")


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_PAGE}")
    return value


def add_ls_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``ls`` on the console script's sub-commands; its ``handler`` default is ``run_ls``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ls", help="list a user's operations, newest first", description="List a user's recorded operations."
    )
    parser.add_argument("--user", required=True, help="the user id, as the application's get_user_id returns it")
    parser.add_argument(
        "--status", action="append", metavar="STATUS", help=f"only these statuses ({', '.join(TaskStatus)}); repeat "
        "the option or separate them with commas"
    )  # fmt: skip
    parser.add_argument("--limit", type=_page_size, default=DEFAULT_PAGE, help=f"at most this many (1-{MAX_PAGE})")
    parser.add_argument("--cursor", help="continue after the page that printed this cursor")
    parser.add_argument("--json", dest="json_lines", action="store_true", help="one JSON object per operation")
    parser.add_argument("--redis-url", help="Redis holding the index (default: CELERY_PROGRESS_WS_REDIS_URL)")
    parser.add_argument("--key-prefix", help="key prefix used by the workers (default: CELERY_PROGRESS_WS_KEY_PREFIX)")
    parser.set_defaults(handler=run_ls)
    return parser


def read_page(
    client: redis.Redis | RedisCluster, settings: ProgressSettings, user_id: str, **query: Any
) -> dict[str, Any]:
    """One page of ``user_id``'s operations (``query``: cursor, statuses, limit), as the web route answers it."""
    keys = KeySpace(settings.key_prefix)
    digest = user_digest(user_id)
    builder = PageBuilder(index_rows(client.zrevrange(keys.user_index(digest), 0, -1, withscores=True)), **query)
    while wanted := builder.wanted():
        builder.add(client.hmget(keys.user_summaries(digest), wanted))
    return builder.result()


def run_ls(args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run the ls command for parsed ``args``; return its exit status."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    overrides = {name: value for name in ("redis_url", "key_prefix") if (value := getattr(args, name)) is not None}
    try:
        settings = ProgressSettings(**overrides)
        statuses = parse_statuses(args.status)
        client = registration_client(settings)
    except (ValidationError, InvalidStatusFilter, ValueError) as exc:  # ValueError: an unusable Redis URL
        err.write(f"{PROG}: {exc}\n")
        return EXIT_USAGE
    try:
        page = read_page(client, settings, args.user, cursor=args.cursor, statuses=statuses, limit=args.limit)
    except InvalidCursor as exc:
        err.write(f"{PROG}: {exc}\n")
        return EXIT_USAGE
    except REDIS_FAILURES as exc:
        err.write(f"{PROG}: Redis cannot be read: {describe(exc)}\n")
        return EXIT_UNAVAILABLE
    finally:
        client.close()
    if args.json_lines:
        for summary in page["operations"]:
            out.write(json.dumps(summary) + "\n")
    else:
        _table(page, out)
    return 0


def _table(page: dict[str, Any], out: TextIO) -> None:
    rows = [COLUMNS] + [_row(summary) for summary in page["operations"]]
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS) - 1)]
    for row in rows:
        out.write(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] + "\n"
        )
    if page["next_cursor"]:
        out.write(f"more: --cursor {page['next_cursor']}\n")


def _row(summary: dict[str, Any]) -> tuple[str, ...]:
    percentage = summary.get("progress_percentage")
    message = summary.get("message") or ""
    if summary.get("error_type"):
        message = f"{summary['error_type']}: {summary.get('error_message') or ''}"
    return (
        str(summary.get("queued_at") or summary.get("started_at") or "-")[:19],
        str(summary.get("status")),
        "-" if percentage is None else f"{percentage:g}%",
        str(summary.get("task_name") or "-"),
        str(summary["operation_id"]),
        message,
    )
