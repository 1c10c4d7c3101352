"""``turnout guards eval cache``: how often the semantic cache answers a true duplicate, and how often it lies.

Data: question pairs ``{a, b, duplicate, group}`` in JSONL (optionally gzipped),
as in ``guards/cache_pairs/mqp.jsonl``: each source question (``group``) once
with a same-meaning rewrite (``duplicate: true``) and once with a look-alike
that means something else (``duplicate: false``).

Protocol. For each pair, ``a`` is stored in the real cache
(:class:`~turnout.cache.SemanticCache` over an :class:`~turnout.cache.InMemoryCacheStore`,
fingerprinted like a request with ``a`` as its last message) with its
embedding, and ``b`` is looked up. A hit on a duplicate pair is a *true hit*,
a hit on a look-alike a *false hit*. ``hit_rate`` = true hits / duplicate
pairs, ``false_hit_rate`` = false hits / look-alike pairs, at every threshold
of the sweep, with the look-alike guard and without it (and with each check
alone). Each pair sits in a context of its own here; the ``crowded`` section
repeats the measure with every ``a`` in one shared context, where a duplicate
served another question's answer counts as a false hit too.

Split. Without ``train_path``, the file is split by ``group`` (so the two
pairs of a source question stay together): a group is *dev* when the first 8
bytes of sha256(group, UTF-8), read as a big-endian integer, fall below
``dev_fraction`` × 2**64. With ``train_path``, that whole file is dev and the
test file is test, minus dev groups that also occur in test (counted in the
result). The threshold is chosen on dev only: the lowest threshold of the
sweep from which on the Wilson 95% upper bound of dev's false-hit rate stays
at or under ``target`` (so a test false-hit rate above the target is unlikely,
not a coin flip). Test figures are reported at that threshold.

``perturbed``: synthetic look-alikes made from each test ``a`` by changing its
first number, inserting "not" after its first auxiliary verb, or swapping its
first unit: each is a different question, so every hit on one is a false hit.
They measure what the guard is for, which the natural pairs rarely contain.

Example::

    from turnout.evaluation.guards_cache import evaluate_cache
    result = evaluate_cache("../shared/data/guards/cache_pairs/mqp.jsonl", plot="out/cache.png")
    result["threshold"], result["hit_rate"], result["false_hit_rate"]
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import math
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from turnout.cache import CHECKS, ContextFingerprint, InMemoryCacheStore, LookalikeGuard, SemanticCache
from turnout.embed import Embedder, create_embedder
from turnout.errors import DataError, MissingDependency
from turnout.types import ChatRequest

#: the threshold sweep: 0.50, 0.51, ..., 1.00
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.01 * i, 2) for i in range(51))
_Z95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Pair:
    """One labelled question pair; ``row`` is its 1-based line in the file."""

    a: str
    b: str
    duplicate: bool
    group: str
    row: int


def load_pairs(path: str | Path) -> list[Pair]:
    """Read ``{a, b, duplicate, group}`` rows from JSONL (``.gz`` too); DataError names the file, row and fix."""
    p = Path(path)
    if not p.is_file():
        raise DataError("file not found", file=str(p), fix="pass the path of a cache_pairs JSONL file")
    opener: Any = gzip.open if p.suffix == ".gz" else open
    pairs: list[Pair] = []
    with opener(p, "rt", encoding="utf-8") as fh:
        for row, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not valid JSON: {exc}", file=str(p), row=row, fix="one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError("not a JSON object", file=str(p), row=row, fix='write {"a", "b", "duplicate", "group"}')
            for col, kind in (("a", str), ("b", str), ("duplicate", bool), ("group", str)):
                if not isinstance(obj.get(col), kind):
                    raise DataError(
                        f"missing or not a {kind.__name__}: {obj.get(col)!r}"[:120],
                        file=str(p),
                        row=row,
                        column=col,
                        fix=f"every row needs '{col}' as a {kind.__name__}",
                    )
            pairs.append(Pair(obj["a"], obj["b"], obj["duplicate"], obj["group"], row))
    if not pairs:
        raise DataError("no rows", file=str(p), fix="pass a non-empty cache_pairs JSONL file")
    return pairs


def is_dev_group(group: str, dev_fraction: float) -> bool:
    """The documented deterministic split: sha256(group)'s first 8 bytes below ``dev_fraction`` of 2**64."""
    return int.from_bytes(hashlib.sha256(group.encode("utf-8")).digest()[:8], "big") < dev_fraction * 2**64


def wilson(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% by default); (0, 1) when ``n`` is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _request(context: str, question: str) -> ChatRequest:
    return ChatRequest("eval", [{"role": "system", "content": context}, {"role": "user", "content": question}])


def _answer(group: str) -> dict[str, Any]:
    # the answer's content names its source question: a hit is judged by where its answer came from
    return {
        "id": "chatcmpl-eval",
        "object": "chat.completion",
        "created": 0,
        "model": "eval",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": group}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


@dataclass
class _Scored:
    """Per pair: the similarity of the hit each cache variant returned at the lowest threshold (nan: no hit)."""

    duplicate: np.ndarray  # bool
    sims: dict[str, np.ndarray]  # variant -> float (nan when no hit at the sweep's lowest threshold)
    correct: dict[str, np.ndarray]  # variant -> bool: the hit served the pair's own answer


def _variants(guard: LookalikeGuard) -> dict[str, LookalikeGuard | None]:
    return {"guard": guard, "no_guard": None, **{f"only_{c}": LookalikeGuard.only(c) for c in CHECKS}}


async def _score_pairs(
    pairs: Sequence[Pair], vecs: dict[str, np.ndarray], guard: LookalikeGuard, lowest: float, *, crowded: bool, candidates: int
) -> _Scored:
    """Store every ``a`` and look every ``b`` up, in one context per pair or (``crowded``) in one shared context."""
    store = InMemoryCacheStore(max_entries=max(1, 2 * len(pairs)), ttl_s=None)
    caches = {
        name: SemanticCache(store, threshold=lowest, guard=g, candidates=candidates, space="eval")
        for name, g in _variants(guard).items()
    }
    any_cache = caches["guard"]
    for i, pair in enumerate(pairs):
        fp = ContextFingerprint.of(_request("shared" if crowded else f"pair {i}", pair.a), tenant="eval")
        await any_cache.store(fp, vecs[pair.a], _answer(pair.group))
    sims = {name: np.full(len(pairs), np.nan) for name in caches}
    correct = {name: np.zeros(len(pairs), dtype=bool) for name in caches}
    for i, pair in enumerate(pairs):
        fp = ContextFingerprint.of(_request("shared" if crowded else f"pair {i}", pair.b), tenant="eval")
        for name, cache in caches.items():
            hit = (await cache.lookup(fp, vecs[pair.b])).hit
            if hit is not None:
                sims[name][i] = hit.similarity
                correct[name][i] = hit.answer["choices"][0]["message"]["content"] == pair.group
    return _Scored(np.array([p.duplicate for p in pairs]), sims, correct)


def _rates(scored: _Scored, variant: str, threshold: float) -> dict[str, Any]:
    """Hit and false-hit rates of one variant at one threshold, with counts and Wilson 95% intervals.

    ``wrong_hits``: duplicates served *another* question's answer (possible only in the crowded setting); a lie
    as much as a false hit, counted apart so that ``false_hit_rate`` keeps its definition (look-alike hits).
    """
    hit = np.nan_to_num(scored.sims[variant], nan=-np.inf) >= threshold
    dup, own = scored.duplicate, scored.correct[variant]
    true_hits = int((hit & dup & own).sum())
    wrong_hits = int((hit & dup & ~own).sum())
    false_hits = int((hit & ~dup).sum())
    n_dup, n_look = int(dup.sum()), int((~dup).sum())
    return {
        "hit_rate": true_hits / n_dup if n_dup else 0.0,
        "false_hit_rate": false_hits / n_look if n_look else 0.0,
        "wrong_hit_rate": wrong_hits / n_dup if n_dup else 0.0,
        "true_hits": true_hits,
        "false_hits": false_hits,
        "wrong_hits": wrong_hits,
        "duplicates": n_dup,
        "lookalikes": n_look,
        "hit_rate_ci95": list(wilson(true_hits, n_dup)),
        "false_hit_rate_ci95": list(wilson(false_hits, n_look)),
    }


def _curve(scored: _Scored, variant: str, thresholds: Sequence[float]) -> dict[str, list[float]]:
    rates = [_rates(scored, variant, t) for t in thresholds]
    return {"hit_rate": [r["hit_rate"] for r in rates], "false_hit_rate": [r["false_hit_rate"] for r in rates]}


def choose_threshold(scored: _Scored, variant: str, thresholds: Sequence[float], target: float) -> float:
    """The lowest threshold from which on (every higher one too) the Wilson 95% upper bound of the false-hit
    rate is at most ``target``; the highest threshold when none qualifies."""
    chosen = max(thresholds)
    for t in sorted(thresholds, reverse=True):
        r = _rates(scored, variant, t)
        if wilson(r["false_hits"], r["lookalikes"])[1] > target:
            break
        chosen = t
    return chosen


_AUX = re.compile(r"\b(is|are|was|were|can|could|does|do|did|should|will|would|has|have)\b", re.IGNORECASE)
_DIGITS = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")
_UNIT_SWAP = {
    "mg": "g",
    "g": "mg",
    "ml": "l",
    "kg": "lb",
    "lbs": "kg",
    "lb": "kg",
    "days": "weeks",
    "day": "week",
    "weeks": "months",
    "week": "month",
    "months": "years",
    "month": "year",
    "hours": "days",
    "hour": "day",
    "years": "months",
    "year": "month",
    "minutes": "hours",
    "mcg": "mg",
    "%": " mg",
}
#: a unit right after a number: the quantity perturbation changes what is measured, not an idiom ("the other day")
_UNIT_WORD = re.compile(r"\d\s?(mg|mcg|ml|kg|lbs|lb|g|%|days?|weeks?|months?|years?|hours?|minutes)(?![a-z])", re.IGNORECASE)


def perturb(text: str) -> dict[str, str]:
    """Look-alikes of ``text`` that ask something else: ``number`` (the first number changed), ``negation``
    ("not" after the first auxiliary verb that is not negated already, and its subject), ``unit`` (the unit of the first quantity
    swapped: "5 mg" -> "5 g", "3 days" -> "3 weeks"). A kind is absent when ``text`` offers nothing to change."""
    out: dict[str, str] = {}
    m = _DIGITS.search(text)
    if m:
        value = m.group(0)
        new = str(int(value) + 1) if value.isdigit() else f"{float(value) * 2:g}"
        out["number"] = text[: m.start()] + new + text[m.end() :]
    for m in _AUX.finditer(text):
        # "Can I take" -> "Can I not take"; skip an auxiliary negated already ("can't", "cannot", "is not")
        after = re.match(r"\s+(\w+)(?=\s)", text[m.end() :])
        if (
            after
            and after.group(1).lower() not in ("not", "never")
            and not re.match(r"(n?['\u2019]t|not)\b", text[m.end() :], re.IGNORECASE)
        ):
            cut = m.end() + after.end()
            out["negation"] = text[:cut] + " not" + text[cut:]
            break
    m = _UNIT_WORD.search(text)
    if m:
        out["unit"] = text[: m.start(1)] + _UNIT_SWAP[m.group(1).lower()] + text[m.end(1) :]
    return out


async def _score_perturbed(
    questions: Sequence[str], vecs: dict[str, np.ndarray], guard: LookalikeGuard, threshold: float
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    store = InMemoryCacheStore(max_entries=max(1, len(questions)), ttl_s=None)
    caches = {
        "guard": SemanticCache(store, threshold=threshold, guard=guard, space="eval"),
        "no_guard": SemanticCache(store, threshold=threshold, guard=None, space="eval"),
    }
    fps = {q: ContextFingerprint.of(_request(f"q {i}", q), tenant="eval") for i, q in enumerate(questions)}
    for q, fp in fps.items():
        await caches["guard"].store(fp, vecs[q], _answer(q))
    # a look-alike is asked under the conversation "q <k>", k its question's place among the distinct questions
    place = {q: k for k, q in enumerate(fps)}
    variants = {q: perturb(q) for q in fps}
    for kind in ("number", "negation", "unit"):
        looks = [(q, v) for q in questions if (v := variants[q].get(kind)) is not None]
        counts = {name: 0 for name in caches}
        for q, v in looks:
            fp = ContextFingerprint.of(_request(f"q {place[q]}", v), tenant="eval")
            for name, cache in caches.items():
                counts[name] += (await cache.lookup(fp, vecs[v])).hit is not None
        n = len(looks)
        sims = [float(vecs[q] @ vecs[v]) for q, v in looks]
        out[kind] = {
            "pairs": n,
            **{f"false_hit_rate_{name}": counts[name] / n if n else 0.0 for name in caches},
            "similarity_p10": float(np.percentile(sims, 10)) if sims else None,
            "similarity_median": statistics.median(sims) if sims else None,
        }
    return out


def _latency(
    embedder_name: str,
    pairs: Sequence[Pair],
    vecs: dict[str, np.ndarray],
    guard: LookalikeGuard,
    threshold: float,
    samples: int,
    cache_dir: str | None,
) -> dict[str, Any]:
    """p50/p95 lookup latency in one shared context holding every ``a``: without and with embedding ``b``."""

    async def run() -> dict[str, Any]:
        store = InMemoryCacheStore(max_entries=max(1, len(pairs)), ttl_s=None)
        cache = SemanticCache(store, threshold=threshold, guard=guard, space="eval")
        for p in pairs:
            await cache.store(ContextFingerprint.of(_request("shared", p.a), tenant="eval"), vecs[p.a], _answer(p.group))
        lookups: list[float] = []
        for p in pairs:
            t0 = time.perf_counter()
            fp = ContextFingerprint.of(_request("shared", p.b), tenant="eval")
            await cache.lookup(fp, vecs[p.b])
            lookups.append((time.perf_counter() - t0) * 1e3)
        with_embed: list[float] = []
        if samples > 0:  # a fresh embedder without the vector cache: the serving path's cost
            live: Embedder = create_embedder(embedder_name, cache=False, progress=False, cache_dir=cache_dir)
            live.embed_one("warm-up")
            for p in list(pairs)[:samples]:
                t0 = time.perf_counter()
                fp = ContextFingerprint.of(_request("shared", p.b), tenant="eval")
                await cache.lookup(fp, live.embed_one(fp.text))
                with_embed.append((time.perf_counter() - t0) * 1e3)
        return {
            "entries": len(store),
            "lookup_p50_ms": statistics.median(lookups),
            "lookup_p95_ms": float(np.percentile(lookups, 95)),
            "with_embedding_p50_ms": statistics.median(with_embed) if with_embed else None,
            "with_embedding_samples": len(with_embed),
        }

    return asyncio.run(run())


def plot_cache(result: dict[str, Any], out_png: str | Path) -> Path:
    """A PNG of the test sweep: hit rate and false-hit rate against the threshold (with and without the guard),
    the chosen threshold and the target; and hit rate against false-hit rate."""
    try:
        import matplotlib
    except ImportError:
        raise MissingDependency("matplotlib", "plot", "plotting the cache curve") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    curve, ts = result["curve"], result["curve"]["thresholds"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 5), dpi=120)
    for variant, style in (("guard", "-"), ("no_guard", "--")):
        label = "with guard" if variant == "guard" else "without guard"
        ax.plot(ts, curve[variant]["hit_rate"], style, color="tab:green", label=f"hit rate on duplicates, {label}")
        ax.plot(ts, curve[variant]["false_hit_rate"], style, color="tab:red", label=f"false-hit rate on look-alikes, {label}")
        ax2.plot(curve[variant]["false_hit_rate"], curve[variant]["hit_rate"], style, color="tab:blue", label=label)
    ax.axvline(result["threshold"], color="black", lw=0.8, label=f"threshold chosen on dev ({result['threshold']:.2f})")
    ax.axhline(result["target_false_hit_rate"], color="grey", lw=0.8, ls=":", label="false-hit target")
    ax.set(
        xlabel="cosine similarity threshold",
        ylabel="rate",
        ylim=(0, 1),
        title=f"{result['embedder']}: test pairs ({result['counts']['duplicates']} duplicates, "
        f"{result['counts']['lookalikes']} look-alikes)",
    )
    ax.legend(fontsize=7)
    ax2.axvline(result["target_false_hit_rate"], color="grey", lw=0.8, ls=":")
    ax2.plot([result["false_hit_rate"]], [result["hit_rate"]], "o", color="black", label="chosen threshold")
    ax2.set(
        xlabel="false-hit rate (look-alikes)",
        ylabel="hit rate (duplicates)",
        xlim=(0, 0.2),
        ylim=(0, 1),
        title="hit rate against false-hit rate",
    )
    ax2.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out


def evaluate_cache(
    test_path: str,
    train_path: str | None = None,
    *,
    embedder: str = "minilm",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    target: float = 0.02,
    dev_fraction: float = 0.5,
    guard: Sequence[str] = CHECKS,
    candidates: int = 4,
    plot: str | None = None,
    latency_samples: int = 200,
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the cache on ``test_path`` (see the module docstring); returns the metrics dict.

    Top-level keys: ``threshold`` (chosen on dev), ``hit_rate`` and ``false_hit_rate`` (test, at that
    threshold, guard on), ``without_guard`` (same threshold, guard off), ``threshold_without_guard`` with
    its test rates, ``per_check``, ``curve`` (test sweep) and ``dev_curve``, ``crowded``, ``perturbed``,
    ``latency``, ``split`` and ``counts``. ``plot`` writes the PNG there.
    """
    if not 0 < dev_fraction < 1:
        raise DataError(f"dev_fraction {dev_fraction} not in (0, 1)", fix="use e.g. 0.5")
    thresholds = sorted({round(float(t), 6) for t in thresholds})
    if not thresholds or not all(-1 <= t <= 1 for t in thresholds):
        raise DataError("thresholds must be cosine similarities in [-1, 1]", fix="e.g. 0.5, 0.51, ..., 1.0")
    the_guard = LookalikeGuard.only(*guard)
    test_all = load_pairs(test_path)
    if train_path is None:
        dev = [p for p in test_all if is_dev_group(p.group, dev_fraction)]
        test = [p for p in test_all if not is_dev_group(p.group, dev_fraction)]
        split = {"rule": f"by group: sha256(group)[:8] < {dev_fraction} * 2**64 is dev", "dropped_overlap_groups": 0}
    else:
        test = test_all
        test_groups = {p.group for p in test}
        train_all = load_pairs(train_path)
        dev = [p for p in train_all if p.group not in test_groups]
        split = {
            "rule": "train file is dev, test file is test (dev groups also in test dropped)",
            "dropped_overlap_groups": len({p.group for p in train_all} & test_groups),
        }
    for name, part, path in (("dev", dev, train_path or test_path), ("test", test, test_path)):
        kinds = {p.duplicate for p in part}
        if kinds != {True, False}:
            raise DataError(
                f"the {name} part has no {'look-alike' if True in kinds else 'duplicate'} pairs ({len(part)} pairs)",
                file=str(path),
                fix="pass a file with both duplicate and non-duplicate pairs, or a --train file "
                "whose groups are not all in the test file",
            )
    split |= {
        "dev_pairs": len(dev),
        "test_pairs": len(test),
        "dev_groups": len({p.group for p in dev}),
        "test_groups": len({p.group for p in test}),
    }

    emb = create_embedder(embedder, progress=progress, cache_dir=cache_dir)
    questions = sorted({p.a for p in test})
    texts = sorted({t for p in [*dev, *test] for t in (p.a, p.b)} | {v for q in questions for v in perturb(q).values()})
    vecs = dict(zip(texts, emb.embed(texts)))
    lowest = min(thresholds)

    async def score() -> tuple[_Scored, _Scored, _Scored]:
        return (
            await _score_pairs(dev, vecs, the_guard, lowest, crowded=False, candidates=candidates),
            await _score_pairs(test, vecs, the_guard, lowest, crowded=False, candidates=candidates),
            await _score_pairs(test, vecs, the_guard, lowest, crowded=True, candidates=candidates),
        )

    dev_scored, test_scored, crowded_scored = asyncio.run(score())
    threshold = choose_threshold(dev_scored, "guard", thresholds, target)
    threshold_ng = choose_threshold(dev_scored, "no_guard", thresholds, target)
    at = _rates(test_scored, "guard", threshold)
    result: dict[str, Any] = {
        "threshold": threshold,
        "hit_rate": at["hit_rate"],
        "false_hit_rate": at["false_hit_rate"],
        "target_false_hit_rate": target,
        "goal_met": at["false_hit_rate"] <= target,
        "rule": "lowest threshold from which on the dev false-hit rate's Wilson 95% upper bound stays <= target",
        "embedder": emb.name,
        "guard_checks": list(the_guard.enabled),
        "test": at,
        "without_guard": _rates(test_scored, "no_guard", threshold),
        "threshold_without_guard": threshold_ng,
        "test_without_guard_at_its_threshold": _rates(test_scored, "no_guard", threshold_ng),
        "dev": {"guard": _rates(dev_scored, "guard", threshold), "no_guard": _rates(dev_scored, "no_guard", threshold)},
        "per_check": {
            c: {
                k: v
                for k, v in _rates(test_scored, f"only_{c}", threshold).items()
                if k in ("hit_rate", "false_hit_rate", "true_hits", "false_hits")
            }
            for c in CHECKS
        },
        "curve": {
            "thresholds": thresholds,
            "guard": _curve(test_scored, "guard", thresholds),
            "no_guard": _curve(test_scored, "no_guard", thresholds),
        },
        "dev_curve": {
            "thresholds": thresholds,
            "guard": _curve(dev_scored, "guard", thresholds),
            "no_guard": _curve(dev_scored, "no_guard", thresholds),
        },
        "crowded": {
            "entries": len({p.a for p in test}),
            "guard": _rates(crowded_scored, "guard", threshold),
            "no_guard": _rates(crowded_scored, "no_guard", threshold),
        },
        "perturbed": asyncio.run(_score_perturbed(questions, vecs, the_guard, threshold)),
        "latency": _latency(embedder, test, vecs, the_guard, threshold, latency_samples, cache_dir),
        "split": split,
        "counts": {"duplicates": at["duplicates"], "lookalikes": at["lookalikes"]},
        "data": {"test_path": str(test_path), "train_path": str(train_path) if train_path else None},
    }
    if plot:
        result["plot"] = str(plot_cache(result, plot))
    return result


__all__ = [
    "DEFAULT_THRESHOLDS",
    "Pair",
    "choose_threshold",
    "evaluate_cache",
    "is_dev_group",
    "load_pairs",
    "perturb",
    "plot_cache",
    "wilson",
]
