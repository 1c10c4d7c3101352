"""Derived signals: a score (and its band) computed from other signals, like vSR's projections.

``score`` adds weighted inputs (numbers as they are, booleans as 0 or 1) to a ``bias``, optionally clipped,
and names the ``band`` the sum falls in. It reads other signals' outputs, so it is computed after them (in
dependency order; a cycle is refused at start-up) and only when some rule reads it or one of its bands.

Example (``turnout.yaml``)::

    signals:
      tokens: {type: tokens}
      st: {type: structure}
      hard:
        type: score
        params:
          inputs: {st.code: 0.4, st.math: 0.4, tokens: 0.0002}   # output name -> weight
          bands: {easy: 0.3, medium: 0.7, hard: null}            # label -> upper bound (exclusive); null: no bound
    decisions:
      - {name: hard-prompts, priority: 5, when: {signal: hard.band, eq: hard}, use: {route: strong}}

Outputs: ``name`` (the score) and, with ``bands``, ``name.band``. A missing input counts as 0 and is listed
in the decision's signal values like every other.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from turnout.signals.base import BuildContext, DerivedSignal, Output, Value
from turnout.signals.registry import param_error


class ScoreSignal(DerivedSignal):
    """``bias + sum(weight * input)``, clipped to ``[lo, hi]`` when given, and its band (module docstring)."""

    type_name = "score"

    def __init__(
        self,
        name: str,
        inputs: Mapping[str, float],
        bias: float = 0.0,
        bands: Mapping[str, float | None] | None = None,
        lo: float | None = None,
        hi: float | None = None,
        build: BuildContext | None = None,
    ) -> None:
        super().__init__(name)
        if not isinstance(inputs, Mapping) or not inputs:
            raise param_error(
                "inputs must map signal outputs to weights", "inputs", "write e.g. inputs: {st.code: 0.5, tokens: 0.001}"
            )
        for k, w in inputs.items():
            if not isinstance(k, str) or not _is_number(w):
                raise param_error(f"input {k!r} needs a numeric weight, got {w!r}", f"inputs.{k}", "write e.g. 0.5")
        if not _is_number(bias):
            raise param_error("bias must be a number", "bias", "write e.g. 0.0")
        for bound, label in ((lo, "lo"), (hi, "hi")):
            if bound is not None and not _is_number(bound):
                raise param_error(f"{label} must be a number", label, "write e.g. 0.0")
        if lo is not None and hi is not None and lo > hi:
            raise param_error(f"lo ({lo}) is above hi ({hi})", "lo", "give lo <= hi")
        self._weights = {k: float(w) for k, w in inputs.items()}
        self.inputs = tuple(self._weights)
        self._bias = float(bias)
        self._lo = -math.inf if lo is None else float(lo)
        self._hi = math.inf if hi is None else float(hi)
        self._bands = self._check_bands(bands)
        self.outputs[name] = Output("number", "weighted sum of " + ", ".join(self.inputs), lo=self._lo, hi=self._hi)
        if self._bands:
            self.outputs[f"{name}.band"] = Output(
                "label",
                "the band the score falls in",
                choices=frozenset(b for b, _ in self._bands),
                optional=self._bands[-1][1] != math.inf,
            )

    @staticmethod
    def _check_bands(bands: Mapping[str, Any] | None) -> list[tuple[str, float]]:
        if bands is None:
            return []
        if not isinstance(bands, Mapping) or not bands:
            raise param_error(
                "bands must map labels to upper bounds", "bands", "write e.g. bands: {low: 0.3, mid: 0.7, high: null}"
            )
        out: list[tuple[str, float]] = []
        for i, (label, upper) in enumerate(bands.items()):
            last = i == len(bands) - 1
            if upper is None and not last:
                raise param_error(
                    f"band {label!r} has no upper bound but is not the last",
                    f"bands.{label}",
                    "only the last band may be open-ended (null)",
                )
            if upper is not None and not _is_number(upper):
                raise param_error(f"band {label!r} needs a numeric upper bound", f"bands.{label}", "write e.g. 0.5")
            value = math.inf if upper is None else float(upper)
            if out and value <= out[-1][1]:
                raise param_error(
                    f"band {label!r} ends at {value:g}, not above the previous band's {out[-1][1]:g}",
                    f"bands.{label}",
                    "list bands from the lowest to the highest bound",
                )
            out.append((str(label), value))
        return out

    def derive(self, values: Mapping[str, Value]) -> dict[str, Value]:
        total = self._bias
        for k, w in self._weights.items():
            v = values.get(k)
            if isinstance(v, bool):
                total += w * (1.0 if v else 0.0)
            elif isinstance(v, (int, float)) and math.isfinite(v):
                total += w * float(v)
        total = min(max(total, self._lo), self._hi)
        out: dict[str, Value] = {self.name: round(total, 6)}
        if self._bands:
            out[f"{self.name}.band"] = next((b for b, upper in self._bands if total < upper), None)
        return out

    def check_inputs(self, outputs: Mapping[str, Output]) -> None:
        """A ConfigError when an input is not a number or a bool (labels cannot be weighted)."""
        for k in self.inputs:
            spec = outputs.get(k)
            if spec is not None and spec.type not in ("number", "bool"):
                raise param_error(
                    f"input {k!r} is a {spec.type}, which cannot be weighted",
                    f"inputs.{k}",
                    "weight numbers and booleans; compare labels in a rule instead",
                )


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


__all__ = ["ScoreSignal"]
