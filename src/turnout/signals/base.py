"""Request signals: small named facts read from a request, which decision rules compare.

A *signal* is configured under a name (``signals: {lang: {type: language}}``) and yields one or more
*outputs*, each a typed value: ``lang`` (a label such as ``fr``) and ``lang.confidence`` (a number); a
keyword signal ``kw`` with sets ``code`` and ``legal`` yields ``kw`` (the set of matched set names) and
``kw.code``, ``kw.legal`` (booleans). Rules compare outputs by their full names (``{signal: kw.code, is:
true}``), and every value computed for a request is shown in its decision.

Four value types, so that rules can be type-checked and analysed at start-up
(:mod:`turnout.signals.conflicts`):

* ``bool``;
* ``number`` (an int or a float), with an optional known range (``lo``, ``hi``);
* ``label`` (one string), with an optional finite set of ``choices``;
* ``labels`` (a set of strings), with optional ``choices``.

A value may be *missing* (``None``): a language not recognised in an empty prompt, a request without
metadata. A rule's leaf on a missing value is false (so ``not`` of it is true), and the analysis knows
which outputs can be missing (:attr:`Output.optional`).

Two kinds of signals:

* **inline** ones (keywords, regular expressions, lengths, roles, metadata, structure, PII patterns,
  language) are cheap and synchronous: :meth:`Signal.extract` runs on the event loop, in microseconds;
* the others (``inline = False``: domain, jailbreak, similarity, complexity) are awaited,
  :meth:`Signal.extract_async`: they ask the request for its embedding (computed once per request and
  shared with the router and the cache) and run anything heavier than a small numpy product through the
  gateway's offloader.

A :class:`DerivedSignal` reads other signals' outputs (a weighted score, a band) instead of the request.

Signals read a request through :class:`RequestView`, which the gateway's ``RequestContext`` satisfies;
:class:`StaticView` is a stand-alone one (benches, tests, offline explanation).

Example::

    sig = KeywordSignal("kw", sets={"code": ["python", "stack trace"]})
    sig.outputs["kw.code"].type                     # 'bool'
    sig.extract(StaticView.of("my python script fails"))   # {'kw': frozenset({'code'}), 'kw.code': True}
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from turnout.embed.base import Embedder
from turnout.types import ChatRequest

#: what a signal output holds (None: missing)
Value = bool | int | float | str | frozenset[str] | None
ValueType = Literal["bool", "number", "label", "labels"]
VALUE_TYPES: tuple[ValueType, ...] = ("bool", "number", "label", "labels")
#: what a request's text views are called in a signal's ``text`` parameter
TEXT_VIEWS = ("prompt", "last", "system", "conversation")


@dataclass(frozen=True, slots=True)
class Output:
    """One typed output of a signal, with what the start-up analysis may know about its values.

    ``choices``: the only labels it can hold (``label``/``labels``; None: any string). ``lo``/``hi``: the
    range of a ``number``. ``optional``: whether it can be missing for some request. ``member_of``: for a
    ``bool`` that is true exactly when another output holds a label (``kw.code`` is ``"code" in kw``), that
    output's name and the label; the analysis then treats the two as one fact.
    """

    type: ValueType
    doc: str = ""
    choices: frozenset[str] | None = None
    lo: float = -math.inf
    hi: float = math.inf
    optional: bool = False
    member_of: tuple[str, str] | None = None

    def describe(self) -> dict[str, Any]:
        """The output as JSON (for ``/v1/signals``-style listings and the docs)."""
        out: dict[str, Any] = {"type": self.type}
        if self.doc:
            out["doc"] = self.doc
        if self.choices is not None:
            out["choices"] = sorted(self.choices)
        if self.type == "number" and (math.isfinite(self.lo) or math.isfinite(self.hi)):
            out["range"] = [self.lo if math.isfinite(self.lo) else None, self.hi if math.isfinite(self.hi) else None]
        if self.optional:
            out["optional"] = True
        return out


class RequestView(Protocol):
    """What a signal may read of a request (the gateway's ``RequestContext`` is one)."""

    @property
    def request(self) -> ChatRequest: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def key(self) -> Any: ...

    @property
    def prompt_text(self) -> str: ...

    @property
    def last_user_text(self) -> str: ...

    @property
    def system_text(self) -> str: ...

    @property
    def conversation_text(self) -> str: ...

    async def embedding(self, embedder: str, text: str | None = None) -> np.ndarray: ...


def view_text(view: RequestView, which: str) -> str:
    """The text a signal reads: ``prompt`` (the user turns), ``last`` (the last user message), ``system`` or
    ``conversation`` (every message)."""
    if which == "prompt":
        return view.prompt_text
    if which == "last":
        return view.last_user_text
    if which == "system":
        return view.system_text
    return view.conversation_text


@dataclass(frozen=True)
class BuildContext:
    """What building a signal may use: where relative paths start, the shared embedders, the offloader.

    ``embedder(name)`` returns the gateway's serving embedder of that name (built once, shared with routes
    and stages); ``offload(fn, *args)`` runs blocking work off the event loop (None: inline, as a bench or a
    test does). ``source`` and ``where`` name the config file and key for errors.
    """

    source: str = "<memory>"
    base_dir: Path | None = None
    embedder: Callable[[str], Embedder] | None = None
    offload: Callable[..., Awaitable[Any]] | None = None

    def get_embedder(self, name: str, where: str) -> Embedder:
        """The embedder ``name`` (a :class:`ConfigError` naming ``where`` when it is unknown)."""
        from turnout.errors import ConfigError

        make = self.embedder
        if make is None:
            from turnout.embed import create_embedder

            def make(n: str) -> Embedder:
                return create_embedder(n, cache=False, progress=False, threads=1)

        try:
            return make(name)
        except KeyError as exc:
            raise ConfigError(f"unknown embedder {name!r}", file=self.source, key=where, fix=str(exc).strip("'\"")) from exc

    def path(self, value: str) -> Path:
        """``value`` as a path, relative ones taken from the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() or self.base_dir is None else self.base_dir / p


class Signal:
    """Base of every signal: a ``name``, its typed ``outputs`` (full name -> :class:`Output`), an extractor.

    Subclasses set ``type_name`` (what ``type:`` says in the config), fill ``self.outputs`` in their
    constructor (which takes ``name`` and the config's ``params`` as keyword arguments, and ``build`` — a
    :class:`BuildContext` — when it declares it), and implement :meth:`extract` (inline) or
    :meth:`extract_async` (``inline = False``). Either returns a value for every output it computed; an
    output left out is missing.
    """

    type_name: ClassVar[str] = ""
    #: True: cheap and synchronous, run on the event loop; False: awaited (embedding, offloaded work)
    inline: ClassVar[bool] = True
    #: parameters that name files (the config loader makes them absolute and checks they exist)
    path_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str) -> None:
        self.name = name
        self.outputs: dict[str, Output] = {}
        #: other signals' outputs this one reads (a derived signal's); computed first
        self.inputs: tuple[str, ...] = ()

    def out(self, suffix: str = "") -> str:
        """The full name of one of this signal's outputs (``""``: the signal's own name)."""
        return f"{self.name}.{suffix}" if suffix else self.name

    def extract(self, view: RequestView) -> dict[str, Value]:
        """This signal's values for one request (inline signals)."""
        raise NotImplementedError(f"{type(self).__name__} is not an inline signal: await extract_async")

    async def extract_async(self, view: RequestView) -> dict[str, Value]:
        """This signal's values for one request; the default runs :meth:`extract`."""
        return self.extract(view)

    def describe(self) -> dict[str, Any]:
        """The signal's type and outputs as JSON."""
        return {"type": self.type_name, "outputs": {n: o.describe() for n, o in self.outputs.items()}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class DerivedSignal(Signal):
    """A signal computed from other signals' outputs (named in ``self.inputs``), never from the request."""

    def derive(self, values: Mapping[str, Value]) -> dict[str, Value]:
        """This signal's values given the values of its inputs (a missing input is absent or None)."""
        raise NotImplementedError

    def extract(self, view: RequestView) -> dict[str, Value]:  # pragma: no cover - the SignalSet calls derive
        raise NotImplementedError("a derived signal is computed from other signals (derive)")


@dataclass
class StaticView:
    """A :class:`RequestView` over a request built in code: what benches, tests and offline tools use.

    ``embedders`` maps names to embedders; :meth:`embedding` embeds inline (blocking), once per text.

    Example::

        view = StaticView.of("Bonjour, pouvez-vous m'aider ?", headers={"x-turnout-tags": "beta"})
    """

    request: ChatRequest
    headers: Mapping[str, str] = field(default_factory=dict)
    key: Any = None
    embedders: Mapping[str, Embedder] = field(default_factory=dict)
    _vectors: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls,
        text: str,
        *,
        system: str | None = None,
        model: str = "auto",
        headers: Mapping[str, str] | None = None,
        key: Any = None,
        embedders: Mapping[str, Embedder] | None = None,
        **params: Any,
    ) -> StaticView:
        """A one-turn chat request (with an optional system message) as a view."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": text})
        return cls(ChatRequest(model, messages, params=dict(params)), dict(headers or {}), key, dict(embedders or {}))

    @property
    def prompt_text(self) -> str:
        return self.request.prompt_text()

    @property
    def last_user_text(self) -> str:
        return self.request.last_user_text()

    @property
    def system_text(self) -> str:
        return self.request.system_text()

    @property
    def conversation_text(self) -> str:
        return self.request.conversation_text()

    async def embedding(self, embedder: str, text: str | None = None) -> np.ndarray:
        text = self.prompt_text if text is None else text
        vec = self._vectors.get((embedder, text))
        if vec is None:
            if embedder not in self.embedders:
                raise KeyError(f"this view has no embedder {embedder!r} (give it in StaticView(embedders=...))")
            vec = self._vectors[(embedder, text)] = self.embedders[embedder].embed_one(text)
        return vec


__all__ = [
    "TEXT_VIEWS",
    "VALUE_TYPES",
    "BuildContext",
    "DerivedSignal",
    "Output",
    "RequestView",
    "Signal",
    "StaticView",
    "Value",
    "ValueType",
    "view_text",
]
