"""The rooms keep their one-way imports, and importing turnout stays cheap."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (pip install 'turnout[dev]')")
    proc = subprocess.run([lint, "--config", str(REPO / ".importlinter")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BROKEN" not in proc.stdout


@pytest.mark.parametrize(
    "module",
    ["turnout", "turnout.routing", "turnout.routing.registry", "turnout.embed", "turnout.evaluation", "turnout.cli.main"],
)
def test_import_pulls_no_heavy_dependency(module: str) -> None:
    """Importing a light room must not import torch, onnxruntime or the server stack."""
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        "names = ('torch', 'onnxruntime', 'sentence_transformers', 'starlette', 'uvicorn', 'matplotlib')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"importing {module} pulled in: {proc.stdout.strip()}"


def test_cli_help_lists_every_command() -> None:
    from turnout.cli.main import COMMANDS

    proc = subprocess.run([sys.executable, "-m", "turnout.cli.main", "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert name in proc.stdout


def test_unknown_command_exits_with_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "turnout.cli.main", "frobnicate"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
