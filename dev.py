#!/usr/bin/env python3
"""One entry point for newcomers and CI: ``python3 dev.py demo`` and ``python3 dev.py test``.

Needs only ``python3`` (3.11+): it creates ``.venv`` beside this file, installs the project with every extra into it
(again only when ``pyproject.toml`` changed), then runs the requested command inside it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
STAMP = VENV / ".installed-from"
EXTRAS = "web,cli,hiredis,metrics,test,dev,docs"
NODE_TOOLS = VENV / "node-tools"
SYSTEM_PACKAGES = {"chromium": "chromium", "nodejs": "node", "npm": "npm"}
"""Debian packages the tests use, each with the command that shows it is installed."""


def run(*command: str | Path, env: dict[str, str] | None = None) -> None:
    """Run a command from the repository root; stop with its exit code if it fails."""
    printable = " ".join(str(part) for part in command)
    print(f"$ {printable}", flush=True)
    completed = subprocess.run([str(part) for part in command], cwd=ROOT, env=env, check=False)
    if completed.returncode != 0:
        sys.exit(completed.returncode)


def ensure_environment() -> None:
    """Create the virtual environment and install the project into it if needed."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be started by an older python3
        sys.exit(f"Python 3.11 or newer is needed, this is {sys.version.split()[0]}")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    run(PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    run(PYTHON, "-m", "pip", "install", "--quiet", "--editable", f".[{EXTRAS}]")
    STAMP.write_text(wanted)


def ensure_test_tools() -> None:
    """Install what the browser and JavaScript tests need: Debian's chromium and Node.js, and TypeScript from npm.

    Where that is not allowed (not root, no apt-get), those tests skip with a loud reason instead.
    """
    missing = [package for package, command in SYSTEM_PACKAGES.items() if not shutil.which(command)]
    if missing and shutil.which("apt-get") and hasattr(os, "geteuid") and os.geteuid() == 0:
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-qq", env=environment)
        run("apt-get", "install", "-y", "-qq", *missing, env=environment)
    elif missing:
        print(f"note: {', '.join(missing)} missing and not installable here; their tests will be skipped", flush=True)
    if shutil.which("npm") and not (NODE_TOOLS / "node_modules" / ".bin" / "tsc").exists():
        run("npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", NODE_TOOLS, "typescript@5")


def command_test(pytest_args: list[str]) -> None:
    """Lint, type-check, build the docs strictly and run every test against real servers (embedded Redis if needed)."""
    ensure_environment()
    ensure_test_tools()
    run(BIN / "ruff", "check", ".")
    run(BIN / "ruff", "format", "--check", ".")
    run(BIN / "mypy")
    run(BIN / "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(VENV / "docs-site"))
    run(PYTHON, "-m", "pytest", *pytest_args)


def command_demo(demo_args: list[str]) -> None:
    """Run the example project: Redis (embedded if none answers), a worker, the web app and a sample task."""
    ensure_environment()
    os.execv(PYTHON, [str(PYTHON), "-m", "example_project.demo", *demo_args])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("test", help="install, lint, type-check and run the tests (extra args go to pytest)")
    sub.add_parser("demo", help="install and run the demo (extra args go to the demo, e.g. --once, --django)")
    sub.add_parser("install", help="only create .venv and install the project")
    args, rest = parser.parse_known_args()
    if args.command == "test":
        command_test(rest)
    elif args.command == "demo":
        command_demo(rest)
    else:
        ensure_environment()


if __name__ == "__main__":
    main()
