"""The cache room's public surface, and that importing it loads no embedder runtime."""

from __future__ import annotations

import subprocess
import sys

import turnout.cache


def test_exported_members_resolve() -> None:
    assert sorted(turnout.cache.__all__) == sorted(set(turnout.cache.__all__))
    for name in turnout.cache.__all__:
        assert getattr(turnout.cache, name) is not None, name


def test_import_does_no_heavy_work() -> None:
    code = (
        "import sys, turnout.cache; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'sentence_transformers', 'redis') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
