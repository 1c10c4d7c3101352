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


def test_an_artifact_with_damaged_metadata_is_a_data_error_naming_the_file(tmp_path) -> None:  # noqa: ANN001
    data, _ = planted(n=40)
    good = save_router(create_router("profile").fit(data), tmp_path / "good.npz", meta={"embedder": "hashing"})
    with np.load(good, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    doc = json.loads(bytes(arrays["__meta__"]).decode())

    def write(name: str, new_doc: dict | None = None, drop: str | None = None, raw: bytes | None = None):
        entries = {k: v for k, v in arrays.items() if k != drop}
        if raw is not None or new_doc is not None:
            entries["__meta__"] = np.frombuffer(raw if raw is not None else json.dumps(new_doc).encode(), dtype=np.uint8)
        np.savez(tmp_path / name, **entries)
        return tmp_path / name

    cases = {
        "no_meta.npz": (write("no_meta.npz", {k: v for k, v in doc.items() if k != "meta"}), "damaged"),
        "bad_state.npz": (write("bad_state.npz", {**doc, "state": {"params": doc["state"]["params"]}}), "damaged"),
        "bad_json.npz": (write("bad_json.npz", raw=b"{not json"), "not valid JSON"),
        "no_router.npz": (write("no_router.npz", {**doc, "router": "nosuchrouter"}), "cannot be rebuilt"),
    }
    for name, (path, needle) in cases.items():
        with pytest.raises(DataError) as info:
            load_router(path)
        assert needle in str(info.value) and name in str(info.value), name
