"""Save and load fitted routers as one ``.npz`` file: arrays plus a JSON metadata entry. No pickle.

A router's :meth:`~turnout.routing.base.Router.get_state` returns nested dicts
of numpy arrays and JSON values. Arrays are stored as ``state/<path>`` entries;
everything else, with the router name and the caller's ``meta`` (models,
embedder, training table, ...), goes into one JSON document stored as the
``__meta__`` entry (a uint8 array of UTF-8 bytes). Loading uses
``allow_pickle=False``, so a file cannot run code.

Example::

    save_router(router, "knn.npz", meta={"embedder": "minilm", "table": "routerbench.parquet"})
    router, meta = load_router("knn.npz")
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import DataError, RoutingError
from turnout.routing.base import Router
from turnout.routing.registry import router_class

FORMAT_VERSION = 1
#: metadata keys :func:`save_router` writes itself and :func:`load_router` merges in (not the caller's ``meta``)
ARTIFACT_KEYS = ("format", "router", "created", "turnout_version")
_ARRAY = "__array__"


def _split(state: Any, prefix: str, arrays: dict[str, np.ndarray], seen: dict[int, str] | None = None) -> Any:
    """Replace every array in a nested state by a reference, collecting the arrays.

    An array that appears more than once (the same object: an ensemble's members
    share the training prompts) is stored once and referenced from every place.
    """
    seen = {} if seen is None else seen
    if isinstance(state, np.ndarray):
        if state.dtype == object:
            raise DataError(f"state entry '{prefix}' is an object array; routers must store numeric arrays or JSON values")
        if id(state) in seen:
            return {_ARRAY: seen[id(state)]}
        seen[id(state)] = prefix
        arrays[f"state/{prefix}"] = state
        return {_ARRAY: prefix}
    if isinstance(state, dict):
        return {str(k): _split(v, f"{prefix}/{k}" if prefix else str(k), arrays, seen) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_split(v, f"{prefix}/{i}", arrays, seen) for i, v in enumerate(state)]
    if isinstance(state, np.generic):
        return state.item()
    return state


def _join(tree: Any, npz: Any, loaded: dict[str, np.ndarray] | None = None) -> Any:
    """Put the arrays back; one stored array referenced from several places is loaded once and shared."""
    loaded = {} if loaded is None else loaded
    if isinstance(tree, dict):
        if set(tree) == {_ARRAY}:
            key = f"state/{tree[_ARRAY]}"
            if key not in loaded:
                loaded[key] = np.asarray(npz[key])
            return loaded[key]
        return {k: _join(v, npz, loaded) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, npz, loaded) for v in tree]
    return tree


def save_router(router: Router, path: str | Path, *, meta: dict[str, Any]) -> Path:
    """Write a fitted router and ``meta`` (JSON-able) to ``path`` (``.npz``); returns the path."""
    from turnout import __version__

    arrays: dict[str, np.ndarray] = {}
    tree = _split(router.get_state(), "", arrays)
    doc = {
        "format": FORMAT_VERSION,
        "router": router.name,
        "models": list(getattr(router, "models", [])),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "turnout_version": __version__,
        "meta": meta,
        "state": tree,
    }
    try:
        blob = json.dumps(doc).encode("utf-8")
    except TypeError as exc:
        raise DataError(f"router metadata is not JSON-serialisable: {exc}", file=str(path)) from exc
    path = Path(path)
    # every array key starts with 'state/', so none can be taken for one of savez's own keywords (allow_pickle)
    members: dict[str, Any] = {"__meta__": np.frombuffer(blob, dtype=np.uint8), **arrays}
    with open(path, "wb") as fh:  # a file object: np.savez would otherwise append '.npz' to other suffixes
        np.savez_compressed(fh, **members)
    return path


def load_router(path: str | Path) -> tuple[Router, dict[str, Any]]:
    """Rebuild a router saved by :func:`save_router`; returns ``(router, metadata)``.

    The metadata holds ``router``, ``models``, ``created``, ``turnout_version``
    and the caller's ``meta`` entries merged at the top level.
    """
    path = Path(path)
    if not path.exists():
        raise DataError("router artifact not found", file=str(path), fix="train one with 'turnout train' or check the path")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "__meta__" not in npz.files:
                raise DataError(
                    "not a turnout router artifact (no turnout metadata in it)",
                    file=str(path),
                    fix="pass a file written by 'turnout train' (or save_router)",
                )
            doc = json.loads(bytes(npz["__meta__"]).decode("utf-8"))
            state = _join(doc.pop("state"), npz)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        # numpy's own messages (e.g. "...load it unsafely using allow_pickle=...") would mislead here: an artifact
        # never holds pickled objects, and one that seems to is not an artifact
        why = (
            "its metadata is not valid JSON"
            if isinstance(exc, json.JSONDecodeError)
            else "not a .npz archive"
            if isinstance(exc, (zipfile.BadZipFile, ValueError))
            else str(exc)
        )
        raise DataError(
            f"not a turnout router artifact ({why})",
            file=str(path),
            fix="pass a file written by 'turnout train' (or save_router)",
        ) from exc
    except (KeyError, TypeError, AttributeError) as exc:  # metadata or arrays missing or of the wrong shape
        raise _damaged(path, exc) from exc
    if doc.get("format") != FORMAT_VERSION:
        raise DataError(
            f"artifact format {doc.get('format')} is not supported (this turnout reads {FORMAT_VERSION})",
            file=str(path),
            fix="re-train the router with this turnout version",
        )
    try:
        router = router_class(doc["router"]).from_state(state)
        meta = {**doc.pop("meta"), **doc}
    except RoutingError as exc:  # e.g. a router this turnout does not know
        raise DataError(
            f"the artifact's router cannot be rebuilt: {exc}",
            file=str(path),
            fix="use the turnout version (and plugins) it was trained with, or train it again",
        ) from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise _damaged(path, exc) from exc
    return router, meta


def _damaged(path: Path, exc: BaseException) -> DataError:
    """The error for an artifact that opens but lacks (or mangles) an entry ``load_router`` needs."""
    return DataError(
        f"a damaged turnout router artifact (missing or malformed entry: {exc})",
        file=str(path),
        fix="train it again with 'turnout train'",
    )
