"""Span-level evaluation of the PII detector: ``turnout guards eval pii TEST [--train TRAIN]``.

Data: JSONL (or ``.jsonl.gz``) rows ``{text, spans: [{type, start, end, value?}], template?, source?}`` as in
``../shared/data/guards/pii/pii.jsonl``. Gold entity names are normalised with
:data:`turnout.signals.pii.TYPE_ALIASES` (``PHONE_NUMBER`` and ``PHONE`` are one type, ``STREET_ADDRESS`` is
``ADDRESS``, ``GPE`` is ``LOCATION``); the table actually applied is in the report (``type_map``).

Matching: a predicted span is a true positive when a gold span of the same normalised type has the same
boundaries (both trimmed of surrounding whitespace): strict, span-level. The ``overlap`` figures count any
overlap of the same type instead (each gold span matched once). ``micro_f1_structured`` sums true and false
positives and negatives over the structured types (email, phone, credit card, IBAN, SSN, IP).

Hold-out: rows are grouped into *template families* (the template with its ``{{slots}}`` blanked and lower-cased,
so ``{{phone_number}}`` and ``{{PHONE_NUMBER}}`` variants of one sentence are one family) and split 60/20/20 into
train/val/test by :func:`template_split`, stratified so each structured type's families reach every part. Rules
were chosen looking at train (and checked on val) only; the report is on the held-out ``test`` families unless
asked otherwise. With ``train_path``, the test file's rows whose family occurs in TRAIN are dropped instead.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from turnout.errors import DataError
from turnout.signals.pii import DETECTABLE_TYPES, STRUCTURED_TYPES, PiiDetector, PiiType, normalise_type

#: evaluate on these parts of the template split (``all``: every row)
HOLDOUTS = ("test", "val", "train", "all")
_PATTERN = ("test", "train", "val", "train", "train", "test", "train", "val", "train", "train")


@dataclass(frozen=True, slots=True)
class GoldSpan:
    """One labelled span, its type normalised (``None``: a name outside the table, kept in ``raw_type``)."""

    type: PiiType | None
    raw_type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class PiiRow:
    """One labelled text."""

    text: str
    spans: tuple[GoldSpan, ...]
    template: str
    source: str


def template_family(template: str) -> str:
    """The family key of a template: slots blanked, case and spacing folded."""
    return " ".join(re.sub(r"\{\{[^}]*\}\}", "{{}}", template).lower().split())


def load_pii_rows(path: str | Path) -> tuple[list[PiiRow], int]:
    """Read labelled rows; returns them and how many spans were re-aligned on their ``value``.

    A span whose ``text[start:end]`` differs from its ``value`` is moved to the nearest occurrence of the value
    within 8 characters (the shared file has one such row); further away it is an error naming the row.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("file not found", file=str(p), fix="pass a JSONL file of {text, spans} rows")
    opener = gzip.open if p.suffix == ".gz" else open
    rows: list[PiiRow] = []
    realigned = 0
    with opener(p, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"not JSON ({exc.msg})", file=str(p), row=i, fix="one JSON object per line") from exc
            row, moved = _parse_row(obj, str(p), i)
            rows.append(row)
            realigned += moved
    if not rows:
        raise DataError("no rows", file=str(p), fix="one JSON object {text, spans} per line")
    return rows, realigned


def _parse_row(obj: Any, file: str, i: int) -> tuple[PiiRow, int]:
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise DataError(
            "a row needs a string 'text'",
            file=file,
            row=i,
            column="text",
            fix='write rows as {"text": ..., "spans": [{"type", "start", "end"}]}',
        )
    text: str = obj["text"]
    raw_spans = obj.get("spans", [])
    if not isinstance(raw_spans, list):
        raise DataError("'spans' must be a list", file=file, row=i, column="spans", fix="a list of {type, start, end}")
    spans: list[GoldSpan] = []
    moved = 0
    for s in raw_spans:
        if not (
            isinstance(s, dict)
            and isinstance(s.get("type"), str)
            and isinstance(s.get("start"), int)
            and isinstance(s.get("end"), int)
        ):
            raise DataError(
                f"bad span {s!r}",
                file=file,
                row=i,
                column="spans",
                fix="each span is {type: str, start: int, end: int, value?: str}",
            )
        start, end = s["start"], s["end"]
        if not 0 <= start < end <= len(text):
            raise DataError(
                f"span {start}-{end} is outside the text ({len(text)} characters)",
                file=file,
                row=i,
                column="spans",
                fix="offsets are Python string indices, end exclusive",
            )
        value = s.get("value")
        if isinstance(value, str) and value and text[start:end] != value:
            near = [m.start() for m in re.finditer(re.escape(value), text) if abs(m.start() - start) <= 8]
            if not near:
                raise DataError(
                    f"span {start}-{end} reads {text[start:end]!r}, not its value {value!r}",
                    file=file,
                    row=i,
                    column="spans",
                    fix="fix the offsets or the value",
                )
            start = min(near, key=lambda q: abs(q - start))
            end = start + len(value)
            moved += 1
        spans.append(GoldSpan(normalise_type(s["type"]), s["type"], start, end))
    template = obj.get("template")
    return PiiRow(text, tuple(spans), template if isinstance(template, str) else text, str(obj.get("source", ""))), moved


def template_split(rows: Sequence[PiiRow]) -> dict[str, str]:
    """Template family -> ``train`` / ``val`` / ``test``: deterministic, about 60/20/20, stratified.

    Families are grouped by the rarest structured type they contain (rarest: held by the fewest families), so
    each structured type's families are spread over the three parts; within a group they are ordered by
    SHA-256 and dealt out test, train, val, train, train, test, train, val, train, train, ...
    """
    types_of: dict[str, set[PiiType]] = {}
    for row in rows:
        held = types_of.setdefault(template_family(row.template), set())
        held.update(s.type for s in row.spans if s.type is not None and s.type in STRUCTURED_TYPES)
    holders = Counter(t for ts in types_of.values() for t in ts)
    strata: dict[str, list[str]] = {}
    for fam, ts in types_of.items():
        key = min(ts, key=lambda t: (holders[t], t.value)).value if ts else ""
        strata.setdefault(key, []).append(fam)
    out: dict[str, str] = {}
    for fams in strata.values():
        for k, fam in enumerate(sorted(fams, key=lambda f: hashlib.sha256(f.encode()).hexdigest())):
            out[fam] = _PATTERN[k % len(_PATTERN)]
    return out


def trim_span(text: str, start: int, end: int) -> tuple[int, int]:
    """``(start, end)`` without the whitespace at either end (gold address spans carry newlines)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class SpanTally:
    """True/false positives and false negatives per type, strict (same boundaries) or by overlap."""

    def __init__(self) -> None:
        self.tp: Counter[str] = Counter()
        self.fp: Counter[str] = Counter()
        self.fn: Counter[str] = Counter()

    def add(self, gold: Iterable[tuple[str, int, int]], pred: Iterable[tuple[str, int, int]], overlap: bool) -> None:
        """Count one text's ``(type, start, end)`` predictions against its gold spans (each gold matched once)."""
        gold_left = list(gold)
        for t, a, b in pred:
            hit = next(
                (g for g in gold_left if g[0] == t and ((g[1] < b and a < g[2]) if overlap else (g[1], g[2]) == (a, b))), None
            )
            if hit is None:
                self.fp[t] += 1
            else:
                self.tp[t] += 1
                gold_left.remove(hit)
        for g in gold_left:
            self.fn[g[0]] += 1

    def scores(self, types: Iterable[str]) -> dict[str, Any]:
        """Precision, recall and F1 summed over ``types`` (None where undefined), with the counts."""
        tp, fp, fn = (sum(c[t] for t in types) for c in (self.tp, self.fp, self.fn))
        p = tp / (tp + fp) if tp + fp else None
        r = tp / (tp + fn) if tp + fn else None
        f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else (0.0 if tp + fn else None)
        return {"precision": _r(p), "recall": _r(r), "f1": _r(f1), "tp": tp, "fp": fp, "fn": fn, "support": tp + fn}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def evaluate_pii(
    test_path: str,
    train_path: str | None = None,
    *,
    holdout: str = "test",
    types: Sequence[str] | None = None,
    min_score: float = 0.5,
    progress: bool = True,
    examples: int = 10,
) -> dict[str, Any]:
    """Evaluate :class:`PiiDetector` on labelled rows; returns the report dict (see the module docstring).

    ``holdout``: which part of the template split of ``test_path`` to score (``test`` by default, or ``val``,
    ``train``, ``all``); ignored when ``train_path`` is given (then every test row whose template family is not
    in TRAIN is scored). ``types``: what the detector looks for (default: every detectable type whose word list
    is installed). Keys: ``micro_f1_structured`` (+ precision, recall, and the ``_overlap`` variant),
    ``per_type: {TYPE: {precision, recall, f1, tp, fp, fn, support}}``, ``per_type_overlap``, ``persons``,
    ``addresses``, ``locations``, ``p50_ms``/``p99_ms``/``mean_ms`` (per text, ``find`` with all ``types``),
    ``p50_ms_default``/``p99_ms_default`` (the default detector: structured types and secrets),
    ``type_map``, ``split``, ``detector``, ``examples``, ``notes``.
    """
    if holdout not in HOLDOUTS:
        raise DataError(f"unknown holdout {holdout!r}", fix=f"use one of: {', '.join(HOLDOUTS)}")
    rows, realigned = load_pii_rows(test_path)
    notes: list[str] = []
    if realigned:
        notes.append(f"{realigned} gold span(s) re-aligned on their value (offsets were off by a few characters)")
    if train_path is not None:
        train_rows, _ = load_pii_rows(train_path)
        seen = {template_family(r.template) for r in train_rows}
        scored = [r for r in rows if template_family(r.template) not in seen]
        split: dict[str, Any] = {
            "rule": "test rows whose template family is not in the train file",
            "train_file": train_path,
            "dropped_rows": len(rows) - len(scored),
        }
    elif holdout == "all":
        scored = rows
        split = {"rule": "every row (no hold-out)"}
    else:
        parts = template_split(rows)
        scored = [r for r in rows if parts[template_family(r.template)] == holdout]
        split = {
            "rule": "template families, stratified 60/20/20 (template_split)",
            "part": holdout,
            "families": sum(1 for v in parts.values() if v == holdout),
            "families_total": len(parts),
        }
    if not scored:
        raise DataError("no rows left to score", file=test_path, fix="use another holdout or train file")
    split["rows"] = len(scored)

    wanted = _default_types(notes) if types is None else list(types)
    detector = PiiDetector(wanted, min_score=min_score)
    default = PiiDetector(min_score=min_score)
    strict, loose = SpanTally(), SpanTally()
    times: list[float] = []
    times_default: list[float] = []
    fps: list[dict[str, Any]] = []
    fns: list[dict[str, Any]] = []
    type_map: dict[str, str | None] = {}
    unmapped: Counter[str] = Counter()
    for row in _maybe_progress(scored, progress):
        t0 = time.perf_counter()
        found = detector.find(row.text)
        times.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        default.find(row.text)
        times_default.append((time.perf_counter() - t0) * 1000)
        gold: list[tuple[str, int, int]] = []
        for s in row.spans:
            type_map[s.raw_type] = s.type.value if s.type else None
            if s.type is None:
                unmapped[s.raw_type] += 1
                continue
            gold.append((s.type.value, *trim_span(row.text, s.start, s.end)))
        pred = [(s.type.value, *trim_span(row.text, s.start, s.end)) for s in found]
        strict.add(gold, pred, overlap=False)
        loose.add(gold, pred, overlap=True)
        _collect_examples(row.text, gold, pred, fps, fns, examples)

    seen_types = sorted(set(strict.tp) | set(strict.fp) | set(strict.fn))
    structured = sorted(t.value for t in STRUCTURED_TYPES)
    micro = strict.scores(structured)
    micro_loose = loose.scores(structured)
    if unmapped:
        notes.append(
            "gold types outside the normalisation table (ignored): "
            + ", ".join(f"{k} ({v})" for k, v in sorted(unmapped.items()))
        )
    undetected = sorted(t for t in seen_types if PiiType(t) not in detector.types)
    if undetected:
        notes.append("in the gold data but not looked for (recall 0 by construction): " + ", ".join(undetected))
    return {
        "file": test_path,
        "n_texts": len(scored),
        "split": split,
        "micro_f1_structured": micro["f1"],
        "micro_precision_structured": micro["precision"],
        "micro_recall_structured": micro["recall"],
        "micro_f1_structured_overlap": micro_loose["f1"],
        "per_type": {t: strict.scores([t]) for t in seen_types},
        "per_type_overlap": {t: loose.scores([t]) for t in seen_types},
        "persons": {"strict": strict.scores(["PERSON"]), "overlap": loose.scores(["PERSON"])},
        "addresses": {"strict": strict.scores(["ADDRESS"]), "overlap": loose.scores(["ADDRESS"])},
        "locations": {"strict": strict.scores(["LOCATION"]), "overlap": loose.scores(["LOCATION"])},
        "p50_ms": round(statistics.median(times), 4),
        "p99_ms": round(_quantile(times, 0.99), 4),
        "mean_ms": round(statistics.fmean(times), 4),
        "p50_ms_default": round(statistics.median(times_default), 4),
        "p99_ms_default": round(_quantile(times_default, 0.99), 4),
        "type_map": dict(sorted(type_map.items())),
        "detector": {
            "types": sorted(t.value for t in detector.types),
            "min_score": min_score,
            "recognizers": sorted(r.name for r in detector.recognizers),
        },
        "examples": {"structured_false_positives": fps, "structured_false_negatives": fns},
        "notes": notes,
    }


def _default_types(notes: list[str]) -> list[str]:
    from turnout.errors import MissingDependency

    wanted = [t.value for t in DETECTABLE_TYPES]
    try:
        PiiDetector([PiiType.PERSON])
    except MissingDependency as exc:
        wanted.remove(PiiType.PERSON.value)
        notes.append(f"persons not detected: {exc}")
    return wanted


def _collect_examples(
    text: str,
    gold: list[tuple[str, int, int]],
    pred: list[tuple[str, int, int]],
    fps: list[dict[str, Any]],
    fns: list[dict[str, Any]],
    limit: int,
) -> None:
    structured = {t.value for t in STRUCTURED_TYPES}
    g, p = set(gold), set(pred)
    for t, a, b in sorted(p - g):
        if t in structured and len(fps) < limit:
            fps.append({"type": t, "text": text[a:b], "context": text[max(0, a - 30) : b + 30]})
    for t, a, b in sorted(g - p):
        if t in structured and len(fns) < limit:
            fns.append({"type": t, "text": text[a:b], "context": text[max(0, a - 30) : b + 30]})


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _maybe_progress(rows: Sequence[PiiRow], progress: bool) -> Iterable[PiiRow]:
    if not progress or len(rows) < 200:
        return rows
    from rich.progress import track

    return track(rows, description="pii: detecting", transient=True)


__all__ = [
    "HOLDOUTS",
    "GoldSpan",
    "PiiRow",
    "SpanTally",
    "evaluate_pii",
    "load_pii_rows",
    "template_family",
    "template_split",
    "trim_span",
]
