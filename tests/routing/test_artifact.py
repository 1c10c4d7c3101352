from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from turnout.errors import DataError
from turnout.routing import create_router, load_router, save_router
from routing_synthetic import planted


def test_single_npz_with_json_meta_and_no_pickle(tmp_path) -> None:  # noqa: ANN001
    data, _ = planted(n=80)
    router = create_router("knn").fit(data)
    path = save_router(router, tmp_path / "r.router", meta={"embedder": "hashing"})
    assert path.name == "r.router"  # the suffix is kept as given
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    assert "__meta__.npy" in names and all(n.endswith(".npy") for n in names)
    with np.load(path, allow_pickle=False) as npz:  # would raise on any pickled entry
        doc = json.loads(bytes(npz["__meta__"]).decode())
    assert doc["router"] == "knn" and doc["models"] == ["A", "B", "C"] and doc["meta"]["embedder"] == "hashing"
    # the saved k is the one chosen by leave-one-out at fit time, not the "auto" request
    assert doc["state"]["params"]["k"] == router.k and "turnout_version" in doc and "created" in doc


def test_bad_files_raise_data_error(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(DataError, match="not found"):
        load_router(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a turnout router artifact"):
        load_router(junk)
    # a file numpy reads as a pickle: numpy's own advice (allow_pickle) would mislead, so it is not passed on
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes((tmp_path / "obj.npy").read_bytes())
    with pytest.raises(DataError, match="not a turnout router artifact") as err:
        load_router(pickled)
    assert "allow_pickle" not in str(err.value)


def test_meta_must_be_json(tmp_path) -> None:  # noqa: ANN001
    data, _ = planted(n=40)
    with pytest.raises(DataError, match="JSON"):
        save_router(create_router("best-single").fit(data), tmp_path / "x.npz", meta={"bad": object()})
