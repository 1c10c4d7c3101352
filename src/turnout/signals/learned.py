"""Learned request signals: wrappers that expose turnout's detectors and classifiers as rule inputs.

Each reads the prompt's embedding from the request (``await view.embedding(name)``: computed once per
request by the gateway's shared, batched embedding service, and shared with the route's router and the
cache), then runs a light numpy head on it inline, or, where the work can be heavier (the jailbreak
detector re-embeds de-obfuscated readings of a disguised prompt; a router artifact's forward pass), through
the gateway's offloader.

* ``domain`` (:class:`~turnout.signals.domain.DomainClassifier`): from an ``artifact`` made by ``turnout
  signals train domain``, or fitted at start-up on ``examples`` (a JSONL of ``{text, label[, split]}``);
  outputs the domain (or ``out_of_scope``), its probability, the in-scope similarity, the nearest domain.
* ``jailbreak`` (:class:`~turnout.signals.jailbreak.JailbreakDetector`): flagged and score; without an
  ``artifact``, the detector shipped in turnout's wheel.
* ``pii`` (:class:`~turnout.signals.pii.PiiDetector`, patterns and validators, inline): found, the types
  found, how many.
* ``similarity``: cosine similarity to named example sets (lists of texts or files), with thresholds.
* ``complexity``: a routing artifact's predicted quality gap between the best and the cheapest candidate
  for this prompt (a large gap: the cheap model is predicted to do much worse).

Example (``turnout.yaml``)::

    signals:
      domain: {type: domain, params: {examples: domains.jsonl, embedder: minilm}}
      jb: {type: jailbreak}
      near: {type: similarity, params: {sets: {refund: [where is my refund, "I want my money back"]}, threshold: 0.6}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from turnout.errors import ConfigError, DataError
from turnout.routing._common import l2_normalize
from turnout.signals.base import BuildContext, Output, RequestView, Signal, Value, view_text
from turnout.signals.heuristic import _check_text
from turnout.signals.registry import param_error


def _existing(build: BuildContext, value: Any, param: str, hint: str) -> Path:
    if not isinstance(value, str) or not value:
        raise param_error(f"{param} must be a file path", param, hint)
    path = build.path(value)
    if not path.is_file():
        raise param_error(f"{param} {value!r} does not exist (looked at {path})", param, hint)
    return path


def _plain(exc: Exception) -> str:
    """An error's message without the ``(fix: ...)`` its ``str`` ends with (the new error states the fix)."""
    text, fix = str(exc), getattr(exc, "fix", None)
    return text[: -len(f" (fix: {fix})")] if fix and text.endswith(f" (fix: {fix})") else text


async def _run(build: BuildContext, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` through the gateway's offloader (inline without one: a bench, a test)."""
    if build.offload is None:
        return fn(*args)
    return await build.offload(fn, *args)


class DomainSignal(Signal):
    """Which declared domain the prompt belongs to, or ``out_of_scope``.

    Give ``artifact`` (a ``.npz`` from ``turnout signals train domain``) or ``examples`` (fitted at start-up;
    rows with ``split: val`` choose the out-of-scope threshold). ``embedder`` must be the artifact's.
    ``threshold`` overrides the out-of-scope threshold. Outputs: ``name`` (the domain or ``out_of_scope``),
    ``name.nearest`` (the most probable domain even out of scope), ``name.probability``,
    ``name.similarity`` (the in-scope score), ``name.out_of_scope``.
    """

    type_name = "domain"
    inline = False
    path_params = ("artifact", "examples")

    def __init__(
        self,
        name: str,
        artifact: str | None = None,
        examples: str | None = None,
        embedder: str = "minilm",
        threshold: float | None = None,
        text: str = "prompt",
        build: BuildContext | None = None,
    ) -> None:
        from turnout.signals.domain import OUT_OF_SCOPE, DomainClassifier

        super().__init__(name)
        build = build or BuildContext()
        self._text = _check_text(text)
        if (artifact is None) == (examples is None):
            raise param_error(
                "give exactly one of artifact or examples",
                "artifact",
                "artifact: domain.npz (turnout signals train domain ...) or examples: domains.jsonl",
            )
        emb = build.get_embedder(embedder, f"signals.{name}.params.embedder")
        try:
            if artifact is not None:
                clf = DomainClassifier.load(
                    _existing(
                        build, artifact, "artifact", "train one with 'turnout signals train domain EXAMPLES --out domain.npz'"
                    )
                )
            else:
                path = _existing(build, examples, "examples", "a JSONL of {text, label} rows")
                clf = DomainClassifier.from_examples(path, emb, embedder_name=embedder)
            clf.check_embedder(emb)
        except (DataError, ConfigError) as exc:
            raise param_error(
                _plain(exc), "artifact" if artifact is not None else "examples", getattr(exc, "fix", None) or "check the file"
            ) from exc
        if threshold is not None:
            if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
                raise param_error("threshold must be a cosine similarity in [-1, 1]", "threshold", "write e.g. 0.45")
            clf.threshold = float(threshold)
        self.classifier = clf
        self.embedder = embedder
        domains = frozenset(clf.domains)
        self.outputs.update(
            {
                name: Output("label", "the domain, or out_of_scope", choices=domains | {OUT_OF_SCOPE}),
                f"{name}.nearest": Output("label", "the most probable domain (even out of scope)", choices=domains),
                f"{name}.probability": Output("number", "the most probable domain's probability", lo=0.0, hi=1.0),
                f"{name}.similarity": Output(
                    "number", "in-scope similarity (mean cosine to the nearest prototypes)", lo=-1.0, hi=1.0
                ),
                f"{name}.out_of_scope": Output("bool", "no declared domain fits", member_of=(name, OUT_OF_SCOPE)),
            }
        )

    async def extract_async(self, view: RequestView) -> dict[str, Value]:
        vec = await view.embedding(self.embedder, view_text(view, self._text))
        p = self.classifier.predict(vec)  # two small products (~0.1 ms): inline
        n = self.name
        return {
            n: p.label,
            f"{n}.nearest": p.nearest,
            f"{n}.probability": round(p.probability, 6),
            f"{n}.similarity": round(p.similarity, 6),
            f"{n}.out_of_scope": p.out_of_scope,
        }


class JailbreakSignal(Signal):
    """Jailbreak and prompt-injection score: ``name`` (flagged) and ``name.score`` in [0, 1].

    ``artifact``: a detector from ``turnout signals train jailbreak`` (default: the one shipped in the
    wheel, fitted on MiniLM vectors); ``threshold`` overrides its own.
    """

    type_name = "jailbreak"
    inline = False
    path_params = ("artifact",)

    def __init__(
        self,
        name: str,
        artifact: str | None = None,
        embedder: str = "minilm",
        threshold: float | None = None,
        text: str = "prompt",
        build: BuildContext | None = None,
    ) -> None:
        from turnout.signals.jailbreak import INLINE_CHARS, JailbreakDetector, shipped_jailbreak_artifact

        super().__init__(name)
        self._build = build or BuildContext()
        self._text = _check_text(text)
        #: prompts up to this many characters are scored inline, longer ones on the offloader
        self._inline_chars = INLINE_CHARS
        if artifact is None:
            path = shipped_jailbreak_artifact()  # the MiniLM detector, whatever the embedder
            if not path.is_file():
                raise param_error(
                    "no artifact given and this turnout ships no jailbreak detector",
                    "artifact",
                    "train one: turnout signals train jailbreak TRAIN.jsonl --out jailbreak.npz",
                )
        else:
            path = _existing(self._build, artifact, "artifact", "train one with 'turnout signals train jailbreak'")
        emb = self._build.get_embedder(embedder, f"signals.{name}.params.embedder")
        try:
            self.detector = JailbreakDetector.load(path, emb)
        except (DataError, ConfigError) as exc:
            raise param_error(_plain(exc), "artifact", getattr(exc, "fix", None) or "check the file") from exc
        if threshold is not None:
            if not isinstance(threshold, (int, float)) or not 0.0 < threshold <= 1.0:
                raise param_error("threshold must lie in (0, 1]", "threshold", "write e.g. 0.5")
            self.detector.threshold = float(threshold)
        self.embedder = embedder
        self.outputs[name] = Output("bool", "flagged as a jailbreak or prompt injection")
        self.outputs[f"{name}.score"] = Output("number", "attack score", lo=0.0, hi=1.0)

    async def extract_async(self, view: RequestView) -> dict[str, Value]:
        text = view_text(view, self._text)
        vec = await view.embedding(self.embedder, text)  # the prompt's text shares the request's one embedding
        # a question: ~0.3 ms of numpy, cheaper inline than a thread hop (a short *disguised* one, 0.4% of benign
        # prompts on the dev set, embeds its decoded reading inline too: ~3 ms once)
        if len(text) <= self._inline_chars:
            verdict = self.detector.score(text, vec)
        else:  # its n-grams and decoders grow with the text, and decoded readings are embedded again: offloaded
            verdict = await _run(self._build, self.detector.score, text, vec)
        return {self.name: bool(verdict.flagged), f"{self.name}.score": round(float(verdict.score), 6)}


class PiiSignal(Signal):
    """Personal data and secrets in the prompt (validated patterns): ``name`` (any found), ``name.types``
    (lower-case type names), ``name.count``. ``types`` and ``min_score`` as :class:`PiiDetector`'s."""

    type_name = "pii"

    def __init__(
        self,
        name: str,
        types: Sequence[str] | None = None,
        min_score: float = 0.5,
        text: str = "prompt",
        build: BuildContext | None = None,
    ) -> None:
        from turnout.signals.pii import PiiDetector

        super().__init__(name)
        self._text = _check_text(text)
        try:
            self.detector = PiiDetector(types, min_score=min_score)
        except ConfigError as exc:
            raise param_error(
                _plain(exc), "types" if "type" in str(exc) else "min_score", exc.fix or "check the parameter"
            ) from exc
        choices = frozenset(t.value.lower() for t in self.detector.types)
        self.outputs[name] = Output("bool", "personal data or a secret was found")
        self.outputs[f"{name}.types"] = Output("labels", "the kinds found", choices=choices)
        self.outputs[f"{name}.count"] = Output("number", "spans found", lo=0)

    def extract(self, view: RequestView) -> dict[str, Value]:
        spans = self.detector.find(view_text(view, self._text))
        return {
            self.name: bool(spans),
            f"{self.name}.types": frozenset(s.type.value.lower() for s in spans),
            f"{self.name}.count": len(spans),
        }


class SimilaritySignal(Signal):
    """Cosine similarity of the prompt to named example sets.

    ``sets``: ``{name: [texts]}``, ``{name: "examples.jsonl"}`` (rows with a ``text``), or ``{name: {examples:
    ..., threshold: 0.7}}``. Outputs: ``name.<set>`` (the highest similarity to one of the set's examples),
    ``name`` (the sets at or over their threshold) and ``name.best`` (the closest of those; missing when none).
    """

    type_name = "similarity"
    inline = False

    def __init__(
        self,
        name: str,
        sets: Mapping[str, Any],
        embedder: str = "minilm",
        threshold: float = 0.6,
        text: str = "prompt",
        build: BuildContext | None = None,
    ) -> None:
        from turnout.signals.heuristic import _check_sets

        super().__init__(name)
        build = build or BuildContext()
        self._text = _check_text(text)
        checked = _check_sets(sets, "sets")
        if not isinstance(threshold, (int, float)) or not -1.0 <= threshold <= 1.0:
            raise param_error("threshold must be a cosine similarity in [-1, 1]", "threshold", "write e.g. 0.6")
        emb = build.get_embedder(embedder, f"signals.{name}.params.embedder")
        self.embedder = embedder
        self._names: list[str] = []
        self._thresholds: list[float] = []
        owners: list[int] = []
        texts: list[str] = []
        for i, (set_name, entry) in enumerate(checked.items()):
            set_threshold = threshold
            if isinstance(entry, Mapping):
                extra = sorted(set(entry) - {"examples", "threshold"})
                if extra:
                    raise param_error(
                        f"unknown key {extra[0]!r}",
                        f"sets.{set_name}.{extra[0]}",
                        "a set is a list of texts, a file, or {examples: ..., threshold: ...}",
                    )
                set_threshold = entry.get("threshold", threshold)
                if not isinstance(set_threshold, (int, float)) or not -1.0 <= set_threshold <= 1.0:
                    raise param_error("threshold must lie in [-1, 1]", f"sets.{set_name}.threshold", "write e.g. 0.7")
                entry = entry.get("examples")
            rows = self._examples(build, entry, set_name)
            self._names.append(set_name)
            self._thresholds.append(float(set_threshold))
            texts.extend(rows)
            owners.extend([i] * len(rows))
            self.outputs[f"{name}.{set_name}"] = Output(
                "number", f"highest cosine similarity to a {set_name!r} example", lo=-1.0, hi=1.0
            )
        self._matrix = l2_normalize(emb.embed(texts))
        self._owner = np.asarray(owners)
        names = frozenset(self._names)
        self.outputs[name] = Output("labels", "the sets the prompt is similar enough to", choices=names)
        self.outputs[f"{name}.best"] = Output("label", "the most similar set over its threshold", choices=names, optional=True)

    @staticmethod
    def _examples(build: BuildContext, entry: Any, set_name: str) -> list[str]:
        if isinstance(entry, str):
            from turnout.signals.examples import read_examples

            path = _existing(build, entry, f"sets.{set_name}", "a JSONL (or Parquet) file of {text} rows")
            try:
                return [r.text for r in read_examples(path, need_label=False)]
            except DataError as exc:
                raise param_error(_plain(exc), f"sets.{set_name}", exc.fix or "check the file") from exc
        if isinstance(entry, list) and entry and all(isinstance(t, str) and t.strip() for t in entry):
            return list(entry)
        raise param_error(
            f"set {set_name!r} must be a non-empty list of texts or a file",
            f"sets.{set_name}",
            "write e.g. refund: [where is my refund, I want my money back]",
        )

    async def extract_async(self, view: RequestView) -> dict[str, Value]:
        vec = await view.embedding(self.embedder, view_text(view, self._text))
        sims = self._matrix @ l2_normalize(vec)[0]
        best = np.full(len(self._names), -1.0)
        np.maximum.at(best, self._owner, sims)
        out: dict[str, Value] = {}
        over: list[tuple[float, str]] = []
        for i, set_name in enumerate(self._names):
            s = round(float(best[i]), 6)
            out[f"{self.name}.{set_name}"] = s
            if s >= self._thresholds[i]:
                over.append((s, set_name))
        out[self.name] = frozenset(n for _, n in over)
        out[f"{self.name}.best"] = max(over)[1] if over else None
        return out


class ComplexitySignal(Signal):
    """How much a strong model is predicted to beat the cheapest one on this prompt.

    ``artifact``: a router artifact (``turnout train``); ``candidates``: the artifact's models to compare
    (default: all it scores); ``embedder``: the one it was trained on. Outputs: ``name`` (the predicted
    quality of the best candidate minus that of the cheapest), ``name.best`` and ``name.cheapest``.
    """

    type_name = "complexity"
    inline = False
    path_params = ("artifact",)

    def __init__(
        self,
        name: str,
        artifact: str,
        embedder: str = "minilm",
        candidates: Sequence[str] | None = None,
        build: BuildContext | None = None,
    ) -> None:
        from turnout.routing.artifact import load_router

        super().__init__(name)
        self._build = build or BuildContext()
        path = _existing(self._build, artifact, "artifact", "train one with 'turnout train TABLE --out router.npz'")
        try:
            self.router, meta = load_router(path)
        except DataError as exc:
            raise param_error(_plain(exc), "artifact", exc.fix or "check the file") from exc
        models = [str(m) for m in (getattr(self.router, "models", None) or meta.get("models") or [])]
        chosen = list(candidates) if candidates is not None else models
        unknown = [c for c in chosen if c not in models]
        if unknown or len(chosen) < 2:
            raise param_error(
                f"candidates must be at least two of the artifact's models; {unknown or chosen} cannot be compared",
                "candidates",
                f"the artifact scores: {', '.join(models)}",
            )
        self._build.get_embedder(embedder, f"signals.{name}.params.embedder")  # built (and warmed up) now
        self.embedder = embedder
        self._chosen = chosen
        self.outputs[name] = Output("number", "predicted quality gap: best candidate minus the cheapest")
        self.outputs[f"{name}.best"] = Output("label", "the candidate predicted best", choices=frozenset(chosen))
        self.outputs[f"{name}.cheapest"] = Output("label", "the candidate predicted cheapest", choices=frozenset(chosen))

    def gap(self, vec: np.ndarray) -> tuple[float, str, str]:
        """``(gap, best, cheapest)`` for one prompt's embedding (blocking: a router's forward pass)."""
        pred = self.router.predict(np.asarray(vec, dtype=np.float32)[None, :])
        idx = [pred.models.index(m) for m in self._chosen]
        q = np.asarray(pred.quality[0, idx], dtype=float)
        c = np.asarray(pred.cost[0, idx], dtype=float)
        best = int(np.nanargmax(q))
        cheapest = int(np.nanargmin(np.where(np.isnan(c), np.inf, c)))
        return float(q[best] - q[cheapest]), self._chosen[best], self._chosen[cheapest]

    async def extract_async(self, view: RequestView) -> dict[str, Value]:
        vec = await view.embedding(self.embedder)
        gap, best, cheapest = await _run(self._build, self.gap, vec)
        return {self.name: round(gap, 6), f"{self.name}.best": best, f"{self.name}.cheapest": cheapest}


__all__ = ["ComplexitySignal", "DomainSignal", "JailbreakSignal", "PiiSignal", "SimilaritySignal"]
