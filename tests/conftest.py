"""Shared fixtures: where the real data lives, and skipping with a reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the shared data folder beside the checkout; TURNOUT_DATA overrides it
DATA = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real routing data not found at {DATA} (set TURNOUT_DATA to the shared data folder)")
    return DATA


def require(path: Path) -> Path:
    """Skip the calling test, with the reason, when a real data file is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder is not beside this checkout)")
    return path
