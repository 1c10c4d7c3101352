"""The testing room's shape: public names importable from their documented places, no module too long,
the scripted module runnable as a program without import warnings."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import turnout.testing
import turnout.testing.scripted

ROOM = Path(turnout.testing.__file__).parent


def test_public_names_are_importable_from_the_package_and_from_scripted() -> None:
    for name in ("Rule", "Script", "ScriptedBackend", "ScriptedServer", "Step"):
        assert getattr(turnout.testing, name) is getattr(turnout.testing.scripted, name)
    assert set(turnout.testing.__all__) == {
        "HashEmbedder",
        "HostileServer",
        "Rule",
        "Script",
        "ScriptedBackend",
        "ScriptedServer",
        "StaticRouter",
        "Step",
    }
    assert {"FAULTS", "RecordedRequest", "main"} <= set(turnout.testing.scripted.__all__)


def test_no_module_of_the_room_is_over_600_lines() -> None:
    lengths = {p.name: len(p.read_text().splitlines()) for p in ROOM.glob("*.py")}
    assert max(lengths.values()) < 600, lengths


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


def test_the_script_model_imports_none_of_the_fakes_so_nothing_is_circular() -> None:
    assert not {m for m in _imports(ROOM / "_script.py") if m.startswith("turnout.testing")}
    assert "turnout.testing.scripted" not in _imports(ROOM / "_wire.py")


def test_python_m_scripted_starts_without_import_warnings() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-W", "error::RuntimeWarning", "-m", "turnout.testing.scripted", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "scripted openai server listening on http://127.0.0.1:" in line, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        proc.wait(10)
