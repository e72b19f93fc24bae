"""How ``celery-progress-ws watch`` shows what it reads: live rich progress bars, or one JSON line per entry."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from .._core.schemas import CHUNKING_PROGRESS, STATUS_UPDATE, TaskStatus
from .._core.streams import Position

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

PROG = "celery-progress-ws watch"


@dataclass
class WatchedOperation:
    """What the watcher knows about one operation."""

    operation_id: str
    stream: str
    live: str
    position: Position = field(default_factory=Position)
    final: TaskStatus | None = None


class Sink(Protocol):
    """Where the watcher sends what it reads."""

    def entry(self, operation: WatchedOperation, message: dict[str, Any]) -> None: ...

    def gap(self, operation: WatchedOperation, message: dict[str, Any]) -> None: ...

    def warn(self, text: str) -> None: ...

    def close(self) -> None: ...


class JsonSink:
    """One JSON line per delivered entry (and per ``history_gap``), tagged with ``operation_id``; warnings on stderr."""

    def __init__(self, stdout: TextIO, stderr: TextIO) -> None:
        self._stdout = stdout
        self._stderr = stderr

    def entry(self, operation: WatchedOperation, message: dict[str, Any]) -> None:
        self._stdout.write(json.dumps({"operation_id": operation.operation_id, **message}) + "\n")
        self._stdout.flush()

    def gap(self, operation: WatchedOperation, message: dict[str, Any]) -> None:
        self.entry(operation, message)

    def warn(self, text: str) -> None:
        self._stderr.write(f"{PROG}: {text}\n")
        self._stderr.flush()

    def close(self) -> None:
        return None


def _clean(value: object, limit: int = 80) -> str:
    """A value as one printable line (task-supplied text must not drive the terminal), shortened to ``limit``."""
    text = "".join(char if char.isprintable() else " " for char in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) else _clean(value, 16)


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


_STATUS_STYLE = {
    "queued": "dim",
    "started": "cyan",
    "retrying": "yellow",
    "completed": "bold green",
    "failed": "bold red",
    "cancelled": "bold yellow",
}


class RichSink:
    """A live progress bar per operation (percentage, status, documents, chunks, rate, ETA, current document)."""

    def __init__(self, operation_ids: Sequence[str], stdout: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self._console: Console = Console(file=stdout, highlight=False)
        self._progress: Progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[percent]}", justify="right"),
            TextColumn("{task.fields[status]}"),
            TextColumn("{task.fields[detail]}", markup=False),
            console=self._console,
            refresh_per_second=8,
        )
        self._tasks: dict[str, TaskID] = {
            operation_id: self._progress.add_task(
                _clean(operation_id, 36), total=None, percent="", status="[dim]waiting", detail=""
            )
            for operation_id in operation_ids
        }
        self._progress.start()

    def entry(self, operation: WatchedOperation, message: dict[str, Any]) -> None:
        task = self._tasks[operation.operation_id]
        data: dict[str, Any] = message["data"]
        if message["type"] == CHUNKING_PROGRESS:
            percentage = data.get("progress_percentage")
            if isinstance(percentage, int | float):
                self._progress.update(task, total=100, completed=percentage, percent=f"{percentage:5.1f}%")
            self._progress.update(task, detail=self._detail(data))
        elif message["type"] == STATUS_UPDATE:
            status = _clean(data.get("status"), 20)
            self._progress.update(task, status=f"[{_STATUS_STYLE.get(status, 'white')}]{status}")
            if status == TaskStatus.COMPLETED:
                self._progress.update(task, total=100, completed=100, percent="100.0%")
            elif status == TaskStatus.FAILED:
                error = ": ".join(_clean(data[key], 200) for key in ("error_type", "error_message") if data.get(key))
                self._line(operation, "failed", error or _clean(data.get("message") or "", 200), "red")
        else:
            summary = _clean(json.dumps(data, default=str), 100) if data else ""
            self._line(operation, _clean(message["type"], 40), summary, "cyan")

    def gap(self, operation: WatchedOperation, message: dict[str, Any]) -> None:
        reason = message["data"]["reason"]
        self._line(operation, "history gap", f"entries may be missing ({reason})", "yellow")

    def warn(self, text: str) -> None:
        from rich.text import Text

        self._console.print(Text(_clean(text, 300), style="yellow"))

    def close(self) -> None:
        self._progress.stop()

    def _line(self, operation: WatchedOperation, label: str, text: str, style: str) -> None:
        from rich.text import Text

        self._console.print(
            Text.assemble((_clean(operation.operation_id, 36), "bold"), "  ", (label, style), "  ", (text, "dim"))
        )

    @staticmethod
    def _detail(data: dict[str, Any]) -> str:
        parts = []
        processed, total = data.get("documents_processed"), data.get("total_documents")
        if processed is not None:
            parts.append(
                f"{_number(processed)}/{_number(total)} docs" if total is not None else f"{_number(processed)} docs"
            )
        if data.get("chunks_created") is not None:
            parts.append(f"{_number(data['chunks_created'])} chunks")
        rate = data.get("rate")
        if isinstance(rate, int | float):
            parts.append(f"{rate:.1f}/s")
        eta = data.get("eta_seconds")
        if isinstance(eta, int | float):
            parts.append(f"ETA {_duration(eta)}")
        for key in ("current_document", "message"):
            if data.get(key):
                parts.append(_clean(data[key], 40))
        return " · ".join(parts)
