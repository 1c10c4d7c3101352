"""Console set-up shared by the commands that print rich tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

#: width used when stdout is not a terminal (a pipe, a file, CI) and ``COLUMNS`` is unset
PIPE_WIDTH = 200


def console(**kwargs: Any) -> Any:
    """A rich Console; when output goes to a pipe or file, wide enough that table cells are not cut.

    rich falls back to 80 columns when it cannot ask a terminal, and then shortens numbers to
    "0.8…". ``COLUMNS`` in the environment still wins.
    """
    from rich.console import Console

    con = Console(**kwargs)
    if not con.is_terminal and "COLUMNS" not in os.environ and "width" not in kwargs:
        con = Console(width=PIPE_WIDTH, **kwargs)
    return con


def print_table(con: Any, table: Any) -> None:
    """Print a rich Table at its natural width even on a narrow terminal, so that no cell is cut to "0.…".

    rich squeezes a table into the terminal by shortening cells; a table of numbers
    is better left as wide as it is (the terminal wraps its lines) than cut.
    """
    from rich.measure import Measurement

    need = Measurement.get(con, con.options.update_width(100_000), table).maximum
    width = con.width
    con.width = max(width, need)  # print(width=) can only narrow the output, so widen the console for this table
    try:
        con.print(table)
    finally:
        con.width = width


def runnable(routers: list[str], con: Any) -> list[str]:
    """``routers`` less those whose optional packages are missing, with one line saying what to install."""
    from turnout.routing.registry import available

    ok, missing = available(routers)
    if missing:
        pkgs = sorted({f"{pkg} (pip install 'turnout[{extra}]')" for m in missing.values() for pkg, extra in m.items()})
        con.print(f"not run: {', '.join(missing)}: they need {', '.join(pkgs)}", style="yellow", markup=False)
    return ok


def check_artifact_path(path: str) -> Path:
    """``path`` as a Path for a router artifact to write, or :class:`DataError` (no .npz suffix, no such folder)."""
    from turnout.errors import DataError

    out = Path(path)
    if not out.name.endswith(".npz"):
        raise DataError("the artifact must be a .npz file", file=str(out), fix="name it e.g. knn.npz")
    if not out.parent.exists():
        raise DataError("output folder does not exist", file=str(out.parent), fix="create it first")
    return out


def signed_interval(v: list[float] | None) -> str:
    """``[-0.0204, 0.5]`` -> ``"-0.020 to +0.500"``; rounded before the sign, so -1e-17 prints as +0.000."""
    if not v:
        return "—"
    return " to ".join(f"{round(x, 3) + 0.0:+.3f}" for x in v)
