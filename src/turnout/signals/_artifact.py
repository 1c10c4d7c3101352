"""One ``.npz`` file per trained guard: named arrays plus a JSON metadata entry. No pickle.

The layout follows :mod:`turnout.routing.artifact`: arrays are stored under
their own names, and one JSON document (``kind``, ``format``, creation time,
turnout version and the guard's own settings) is stored as the ``__meta__``
entry, a uint8 array of UTF-8 bytes. Loading uses ``allow_pickle=False``, so a
file cannot run code, and every way a file can be wrong (absent, not a zip, no
metadata, metadata not JSON, another guard's file, a newer format, an array
missing) is a :class:`~turnout.errors.DataError` naming the file and the fix.
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import DataError

FORMAT_VERSION = 1
_META = "__meta__"


def save_guard(path: str | Path, kind: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` and ``meta`` (JSON-able) as a ``kind`` guard artifact at ``path``; returns the path."""
    from turnout import __version__

    path = Path(path)
    if not path.name.endswith(".npz"):
        raise DataError("a guard artifact must be a .npz file", file=str(path), fix="name it e.g. domain.npz")
    if not path.parent.exists():
        raise DataError("output folder does not exist", file=str(path.parent), fix="create it first")
    doc = {
        "kind": kind,
        "format": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "turnout_version": __version__,
        "meta": meta,
    }
    for name, arr in arrays.items():
        if name == _META or arr.dtype == object:
            raise DataError(f"guard array '{name}' cannot be stored (reserved name or object dtype)", file=str(path))
    try:
        blob = json.dumps(doc).encode("utf-8")
    except TypeError as exc:
        raise DataError(f"guard metadata is not JSON-serialisable: {exc}", file=str(path)) from exc
    entries: dict[str, Any] = {_META: np.frombuffer(blob, dtype=np.uint8), **arrays}
    with open(path, "wb") as fh:  # a file object: np.savez would otherwise append '.npz' to other suffixes
        np.savez_compressed(fh, **entries)
    return path


def load_guard(
    path: str | Path, kind: str, *, arrays: Iterable[str], train_hint: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a ``kind`` guard artifact: ``(arrays by name, the guard's meta)``.

    ``arrays`` lists the entries the guard needs (a missing one makes the file
    damaged); ``train_hint`` is the command that makes a good one, for the fix.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{kind} guard artifact not found", file=str(path), fix=f"make one with '{train_hint}'")
    fix = f"pass a file written by '{train_hint}'"
    try:
        with np.load(path, allow_pickle=False) as npz:
            if _META not in npz.files:
                raise DataError("not a turnout guard artifact (no turnout metadata in it)", file=str(path), fix=fix)
            doc = json.loads(bytes(npz[_META]).decode("utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict):
                raise DataError(
                    "a damaged guard artifact (its metadata is not a JSON object with 'meta')",
                    file=str(path),
                    fix=f"make it again with '{train_hint}'",
                )
            if doc.get("kind") != kind:
                raise DataError(f"this is a '{doc.get('kind')}' artifact, not a '{kind}' guard", file=str(path), fix=fix)
            if doc.get("format") != FORMAT_VERSION:
                raise DataError(
                    f"guard artifact format {doc.get('format')} is not supported (this turnout reads {FORMAT_VERSION})",
                    file=str(path),
                    fix=f"make it again with '{train_hint}'",
                )
            missing = [a for a in arrays if a not in npz.files]
            if missing:
                raise DataError(
                    f"a damaged {kind} guard artifact (missing arrays: {', '.join(missing)})",
                    file=str(path),
                    fix=f"make it again with '{train_hint}'",
                )
            loaded = {name: np.asarray(npz[name]) for name in npz.files if name != _META}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        # numpy's own messages (e.g. "...load it unsafely using allow_pickle=...") would mislead: an artifact never
        # holds pickled objects, and a file that seems to is not an artifact
        why = (
            "its metadata is not valid JSON"
            if isinstance(exc, json.JSONDecodeError)
            else "not a readable .npz archive"
            if isinstance(exc, (zipfile.BadZipFile, ValueError, EOFError))
            else str(exc)
        )
        raise DataError(f"not a turnout guard artifact ({why})", file=str(path), fix=fix) from exc
    meta: dict[str, Any] = doc["meta"]
    meta = {**meta, "created": doc.get("created"), "turnout_version": doc.get("turnout_version")}
    return loaded, meta


def damaged(path: str | Path | None, kind: str, why: str, train_hint: str) -> DataError:
    """The error for an artifact that opens but whose arrays or settings do not fit together."""
    return DataError(
        f"a damaged {kind} guard artifact ({why})",
        file=None if path is None else str(path),
        fix=f"make it again with '{train_hint}'",
    )
