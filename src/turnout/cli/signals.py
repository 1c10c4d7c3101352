"""``turnout signals train KIND TRAIN --out FILE.npz``: registered here, implemented in :mod:`turnout.cli.guards`."""

from __future__ import annotations

from typing import Any


def register(subparsers: Any) -> None:
    from turnout.cli.guards import register_signals

    register_signals(subparsers)
