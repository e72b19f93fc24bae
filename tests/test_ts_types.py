"""The browser client's TypeScript declarations stay generated from the shared schemas."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devtools.ts_types import TARGET, render


def test_declarations_are_up_to_date() -> None:
    """progress-client.d.ts equals what the generator renders (run `python -m devtools.ts_types` after a change)."""
    assert TARGET.read_text() == render()


def test_every_schema_model_is_declared() -> None:
    """Each model and enum of wire_json_schema() appears as an exported TypeScript type."""
    from celery_progress_ws import wire_json_schema

    text = render()
    for name in wire_json_schema()["$defs"]:
        assert f"export interface {name} " in text or f"export type {name} = " in text


LOCAL_TSC = Path(__file__).resolve().parent.parent / ".venv" / "node-tools" / "node_modules" / ".bin" / "tsc"


def test_declarations_compile_when_tsc_is_installed(tmp_path: Path) -> None:
    """With a TypeScript compiler (dev.py installs one from npm), the declarations and a usage of subscribe,
    subscribeMine and listMine type-check --strict."""
    tsc = shutil.which("tsc") or (str(LOCAL_TSC) if LOCAL_TSC.exists() else None)
    if tsc is None:
        pytest.skip("SKIPPED LOUDLY: no TypeScript compiler (python3 dev.py test installs one when npm is available)")
    (tmp_path / "progress-client.d.ts").write_text(TARGET.read_text())
    (tmp_path / "usage.ts").write_text(
        "import { listMine, ProgressRequestError, subscribe, subscribeMine } from './progress-client';\n"
        "import type { CloseInfo, OperationsPage } from './progress-client';\n"
        "const subscription = subscribe('op', {\n"
        "  onProgress: (data, message) => console.log(data.progress_percentage ?? 0, message.id),\n"
        "  onStatus: (data) => console.log(data.status === 'failed' ? data.error_type : data.status),\n"
        "  onClose: (info: CloseInfo) => console.log(info.reason, info.status),\n"
        "});\n"
        "subscription.close();\n"
        "const feed = subscribeMine({\n"
        "  onUpdate: (summary, message) => console.log(summary.operation_id, summary.status, message.id),\n"
        "  onGap: (data) => console.log(data.reason),\n"
        "});\n"
        "feed.close();\n"
        "listMine({ status: ['queued', 'started'], limit: 5 }).then(\n"
        "  (page: OperationsPage) => page.operations.map((s) => s.progress_percentage ?? 0),\n"
        "  (error: unknown) => error instanceof ProgressRequestError ? error.status : 0,\n"
        ");\n"
    )
    options = ["--noEmit", "--strict", "--target", "es2022", "--lib", "es2022,dom", "--module", "esnext"]
    subprocess.run(
        [tsc, *options, "--moduleResolution", "bundler", str(tmp_path / "usage.ts")],
        check=True,
        cwd=tmp_path,
    )
