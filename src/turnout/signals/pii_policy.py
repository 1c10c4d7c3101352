"""What to do about PII in a request: allow it, redact it, block the request, or send it only to private models.

A :class:`PiiPolicy` is built once from config (:meth:`PiiPolicy.from_config`, which validates it and names the
key at fault) and is pure afterwards: :meth:`PiiPolicy.decide` turns the spans a :class:`PiiDetector` found into a
:class:`PiiVerdict`. The gateway acts on the verdict; nothing here does I/O.

Proposed config (``pii`` at the top level, or per route)::

    pii:
      action: redact            # allow | redact | block | private_only: for every type listed in `types`
      types: [EMAIL, PHONE, CREDIT_CARD, IBAN, SSN, IP_ADDRESS, SECRET]   # what to look for (default)
      per_type: {SECRET: block, PERSON: allow}                             # overrides, by type
      restore: true             # put the originals back into the answer (placeholders only)
      min_score: 0.5
      response: {redact: true, types: [SECRET, CREDIT_CARD, IBAN, SSN]}   # the response-side check

Example::

    >>> from turnout.signals.pii import PiiDetector
    >>> policy = PiiPolicy.from_config({"action": "redact", "per_type": {"SECRET": "block"}})
    >>> text = "my card is 4111 1111 1111 1111"
    >>> verdict = policy.decide(PiiDetector(policy.detect_types).find(text))
    >>> verdict.action.value, verdict.counts
    ('redact', {'CREDIT_CARD': 1})
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from turnout.errors import ConfigError
from turnout.signals._pii_types import PiiSpan, PiiType
from turnout.signals.pii import DEFAULT_TYPES, parse_types


class PiiAction(StrEnum):
    """What a type of PII in a request leads to, mildest first."""

    ALLOW = "allow"
    REDACT = "redact"
    PRIVATE_ONLY = "private_only"
    BLOCK = "block"


# when a request holds several types, the strictest action wins
_SEVERITY = {PiiAction.ALLOW: 0, PiiAction.REDACT: 1, PiiAction.PRIVATE_ONLY: 2, PiiAction.BLOCK: 3}
_RESPONSE_KEYS = {"redact", "types", "style"}


@dataclass(frozen=True, slots=True)
class PiiVerdict:
    """The decision for one request.

    ``action``: the strictest action any found type called for (``allow`` when nothing was found).
    ``counts``: spans found per type (values are never kept here: safe to log). ``to_redact``: the spans to
    replace before the request leaves (only when ``action`` is ``redact``). ``reason``: one line for logs and
    for the error a blocked client gets.
    """

    action: PiiAction
    counts: dict[str, int]
    to_redact: tuple[PiiSpan, ...] = ()
    by_type: dict[str, PiiAction] = field(default_factory=dict)

    @property
    def blocked(self) -> bool:
        """True when the request must be refused."""
        return self.action is PiiAction.BLOCK

    @property
    def private_only(self) -> bool:
        """True when only models marked ``private: true`` may receive the request (unredacted)."""
        return self.action is PiiAction.PRIVATE_ONLY

    @property
    def reason(self) -> str:
        """e.g. ``"pii: block (SECRET x1); redact (EMAIL x2)"``: types and counts, never the values."""
        if not self.counts:
            return "pii: none found"
        groups: dict[PiiAction, list[str]] = {}
        for t, n in sorted(self.counts.items()):
            groups.setdefault(self.by_type.get(t, PiiAction.ALLOW), []).append(f"{t} x{n}")
        parts = [f"{a.value} ({', '.join(v)})" for a, v in sorted(groups.items(), key=lambda kv: -_SEVERITY[kv[0]])]
        return "pii: " + "; ".join(parts)


@dataclass(frozen=True, slots=True)
class ResponsePiiSettings:
    """The response-side check: redact these types in answers (streamed or not)."""

    redact: bool = True
    types: frozenset[PiiType] = frozenset({PiiType.SECRET, PiiType.CREDIT_CARD, PiiType.IBAN, PiiType.SSN})
    style: str = "type"


@dataclass(frozen=True, slots=True)
class PiiPolicy:
    """Per-type actions for PII in requests; see the module docstring for the config shape."""

    action: PiiAction = PiiAction.REDACT
    types: frozenset[PiiType] = DEFAULT_TYPES
    per_type: Mapping[PiiType, PiiAction] = field(default_factory=dict)
    restore: bool = True
    min_score: float = 0.5
    response: ResponsePiiSettings = field(default_factory=ResponsePiiSettings)

    @property
    def detect_types(self) -> frozenset[PiiType]:
        """Every type the request-side detector must look for (``types`` plus those named in ``per_type``)."""
        return self.types | frozenset(self.per_type)

    def action_for(self, type: PiiType) -> PiiAction:
        """The action for one type: its override, else ``action`` if it is listed in ``types``, else allow."""
        if type in self.per_type:
            return self.per_type[type]
        return self.action if type in self.types else PiiAction.ALLOW

    def decide(self, spans: Sequence[PiiSpan]) -> PiiVerdict:
        """The verdict for the spans found in one request (all its messages together)."""
        counts = Counter(s.type.value for s in spans)
        by_type = {t: self.action_for(PiiType(t)) for t in counts}
        worst = max(by_type.values(), key=lambda a: _SEVERITY[a], default=PiiAction.ALLOW)
        to_redact = tuple(s for s in spans if by_type[s.type.value] is PiiAction.REDACT) if worst is PiiAction.REDACT else ()
        return PiiVerdict(worst, dict(sorted(counts.items())), to_redact, by_type)

    @classmethod
    def from_config(cls, raw: Mapping[str, Any], *, key: str = "pii", file: str | None = None) -> PiiPolicy:
        """Validate a ``pii`` config mapping; every mistake is a :class:`ConfigError` naming the key and the fix."""
        known = {"action", "types", "per_type", "restore", "min_score", "response"}
        for k in raw:
            if k not in known:
                raise ConfigError(
                    f"unknown key {k!r}", file=file, key=f"{key}.{k}", fix=f"use one of: {', '.join(sorted(known))}"
                )
        action = _action(raw.get("action", "redact"), f"{key}.action", file)
        types = parse_types(_list(raw.get("types", sorted(DEFAULT_TYPES)), f"{key}.types", file), key=f"{key}.types")
        per_raw = raw.get("per_type", {}) or {}
        if not isinstance(per_raw, Mapping):
            raise ConfigError(
                "must be a mapping of type: action", file=file, key=f"{key}.per_type", fix="e.g. {SECRET: block, PERSON: allow}"
            )
        per_type = {
            next(iter(parse_types([t], key=f"{key}.per_type.{t}"))): _action(a, f"{key}.per_type.{t}", file)
            for t, a in per_raw.items()
        }
        restore = raw.get("restore", True)
        if not isinstance(restore, bool):
            raise ConfigError("must be true or false", file=file, key=f"{key}.restore")
        min_score = raw.get("min_score", 0.5)
        if not isinstance(min_score, (int, float)) or not 0 <= min_score <= 1:
            raise ConfigError("must be a number within [0, 1]", file=file, key=f"{key}.min_score")
        resp_raw = raw.get("response", {}) or {}
        if not isinstance(resp_raw, Mapping) or set(resp_raw) - _RESPONSE_KEYS:
            raise ConfigError(
                "unknown response setting", file=file, key=f"{key}.response", fix=f"keys: {', '.join(sorted(_RESPONSE_KEYS))}"
            )
        response = ResponsePiiSettings()
        if resp_raw:
            style = resp_raw.get("style", response.style)
            if style not in ("placeholder", "type", "mask"):
                raise ConfigError(
                    f"unknown style {style!r}", file=file, key=f"{key}.response.style", fix="use placeholder, type or mask"
                )
            response = ResponsePiiSettings(
                redact=bool(resp_raw.get("redact", True)),
                types=parse_types(
                    _list(resp_raw.get("types", sorted(response.types)), f"{key}.response.types", file),
                    key=f"{key}.response.types",
                ),
                style=style,
            )
        return cls(action, types, per_type, restore, float(min_score), response)


def _action(value: Any, key: str, file: str | None) -> PiiAction:
    try:
        return PiiAction(str(value))
    except ValueError:
        raise ConfigError(
            f"unknown action {value!r}", file=file, key=key, fix=f"use one of: {', '.join(a.value for a in PiiAction)}"
        ) from None


def _list(value: Any, key: str, file: str | None) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError("must be a list of type names", file=file, key=key, fix="e.g. [EMAIL, PHONE, SECRET]")
    return list(value)


__all__ = ["PiiAction", "PiiPolicy", "PiiVerdict", "ResponsePiiSettings"]
