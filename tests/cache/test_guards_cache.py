"""``evaluate_cache``: its reading of the data, its split and threshold rule, and a run on a slice of the real pairs."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import require
from turnout.errors import DataError
from turnout.evaluation.guards_cache import (
    _rates,
    _Scored,
    choose_threshold,
    evaluate_cache,
    is_dev_group,
    load_pairs,
    perturb,
    wilson,
)


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_load_pairs_names_the_row_column_and_fix(tmp_path: Path) -> None:
    good = {"a": "q", "b": "r", "duplicate": True, "group": "q"}
    with pytest.raises(DataError, match=r"row 2, column 'duplicate'.*fix"):
        load_pairs(write(tmp_path / "p.jsonl", [good, {**good, "duplicate": "yes"}]))
    with pytest.raises(DataError, match=r"row 1, column 'group'"):
        load_pairs(write(tmp_path / "p.jsonl", [{"a": "q", "b": "r", "duplicate": False}]))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"a": "q"\n')
    with pytest.raises(DataError, match="row 1: not valid JSON"):
        load_pairs(bad_json)
    with pytest.raises(DataError, match="file not found"):
        load_pairs(tmp_path / "absent.jsonl")
    with pytest.raises(DataError, match="no rows"):
        load_pairs(write(tmp_path / "empty.jsonl", []))
    assert load_pairs(write(tmp_path / "ok.jsonl", [good]))[0].row == 1


def test_split_is_deterministic_by_group_and_near_the_fraction() -> None:
    groups = [f"question {i}" for i in range(4000)]
    dev = [g for g in groups if is_dev_group(g, 0.5)]
    assert dev == [g for g in groups if is_dev_group(g, 0.5)]
    assert 0.46 < len(dev) / len(groups) < 0.54
    assert len([g for g in groups if is_dev_group(g, 0.2)]) < len(dev)


def test_wilson_bounds() -> None:
    lo, hi = wilson(0, 768)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.004 < hi < 0.006
    lo, hi = wilson(15, 768)
    assert lo < 15 / 768 < hi and hi > 0.02  # 2.0% observed is not "under 2%" with confidence
    assert wilson(0, 0) == (0.0, 1.0)


def test_threshold_rule_takes_the_lowest_safe_threshold_from_which_on_all_are_safe() -> None:
    # 200 look-alikes, 100 duplicates; look-alike similarities spread low, duplicates high
    dup = np.array([True] * 100 + [False] * 200)
    sims = np.concatenate([np.linspace(0.80, 0.99, 100), np.linspace(0.50, 0.90, 200)])
    scored = _Scored(dup, {"v": sims}, {"v": dup.copy()})
    ts = [round(0.5 + 0.01 * i, 2) for i in range(51)]
    t = choose_threshold(scored, "v", ts, 0.02)
    assert wilson(_rates(scored, "v", t)["false_hits"], 200)[1] <= 0.02
    below = round(t - 0.01, 2)
    assert wilson(_rates(scored, "v", below)["false_hits"], 200)[1] > 0.02
    r = _rates(scored, "v", t)
    assert r["hit_rate"] == pytest.approx(float((sims[:100] >= t).mean()))


def test_perturbations_change_what_is_asked() -> None:
    p = perturb("Can I take 5mg of melatonin for 3 days?")
    assert p == {
        "number": "Can I take 6mg of melatonin for 3 days?",
        "negation": "Can I not take 5mg of melatonin for 3 days?",
        "unit": "Can I take 5g of melatonin for 3 days?",
    }
    assert perturb("I can't sleep at the end of the day") == {}  # nothing to change: no number, aux negated
    assert perturb("Is 38.5 a fever?")["number"] == "Is 77 a fever?"


def small_slice(data_dir: Path, tmp_path: Path, groups: int) -> Path:
    src = require(data_dir / "guards" / "cache_pairs" / "mqp.jsonl")
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()]
    keep = list(dict.fromkeys(r["group"] for r in rows))[:groups]
    return write(tmp_path / "slice.jsonl", [r for r in rows if r["group"] in set(keep)])


def test_evaluate_on_a_real_slice(data_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot needs the 'plot' extra")
    path = small_slice(data_dir, tmp_path, 160)
    png = tmp_path / "curve.png"
    r = evaluate_cache(
        str(path), embedder="hashing", plot=str(png), latency_samples=10, progress=False, cache_dir=str(tmp_path / "emb")
    )
    assert {"threshold", "hit_rate", "false_hit_rate"} <= set(r)
    assert r["split"]["dev_pairs"] + r["split"]["test_pairs"] == 320
    assert r["counts"]["duplicates"] == r["counts"]["lookalikes"] == r["split"]["test_groups"]
    ts = r["curve"]["thresholds"]
    assert ts[0] == 0.5 and ts[-1] == 1.0
    for variant in ("guard", "no_guard"):
        hit, false = r["curve"][variant]["hit_rate"], r["curve"][variant]["false_hit_rate"]
        # one context per pair: raising the threshold can only remove hits
        assert all(x >= y for x, y in itertools.pairwise(hit)) and all(x >= y for x, y in itertools.pairwise(false))
    # the guard only ever removes hits
    assert all(g <= n for g, n in zip(r["curve"]["guard"]["false_hit_rate"], r["curve"]["no_guard"]["false_hit_rate"]))
    assert all(g <= n for g, n in zip(r["curve"]["guard"]["hit_rate"], r["curve"]["no_guard"]["hit_rate"]))
    assert r["hit_rate"] == r["curve"]["guard"]["hit_rate"][ts.index(r["threshold"])]
    # the threshold was chosen on dev: dev's upper bound is under target there
    dev = r["dev"]["guard"]
    assert wilson(dev["false_hits"], dev["lookalikes"])[1] <= r["target_false_hit_rate"] or r["threshold"] == 1.0
    for kind in r["perturbed"].values():
        assert kind["false_hit_rate_guard"] <= kind["false_hit_rate_no_guard"]
    assert r["latency"]["lookup_p50_ms"] > 0 and r["latency"]["with_embedding_samples"] == 10
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(r)  # the CLI writes it as JSON


def test_train_file_is_dev_and_overlapping_groups_are_dropped(data_dir: Path, tmp_path: Path) -> None:
    path = small_slice(data_dir, tmp_path, 60)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    train = write(tmp_path / "train.jsonl", rows[:80])
    test = write(tmp_path / "test.jsonl", rows[60:])
    r = evaluate_cache(
        str(test), str(train), embedder="hashing", latency_samples=0, progress=False, cache_dir=str(tmp_path / "emb")
    )
    assert r["split"]["dropped_overlap_groups"] == 10
    assert r["split"]["dev_pairs"] == 60 and r["split"]["test_pairs"] == 60
    with pytest.raises(DataError, match="dev part has no"):
        evaluate_cache(
            str(test), str(test), embedder="hashing", latency_samples=0, progress=False, cache_dir=str(tmp_path / "emb")
        )
