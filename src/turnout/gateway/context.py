"""The one object a request carries through every stage of the pipeline.

A :class:`RequestContext` is made once per request, by :meth:`Gateway.chat` / :meth:`Gateway.chat_stream`
(or the dry run), and handed to each stage in turn: authenticate → signals → request guards → cache
lookup → decide → execute the plan → response plugins → account and log. It holds:

* what came in: the parsed request, the request id, the request's metadata headers, the API key's spec;
* where it is going: the route or model asked for (``target``; a guard may redirect it) and the models a
  guard restricted it to (``restrict``);
* text views computed on first use (the last user message, the whole conversation, the system prompt);
* the prompt embedding, computed at most once per embedder and only if some stage asks for it
  (:meth:`embedding`): the router, a domain guard and the semantic cache share one vector;
* what stages found: ``signals`` (name → value), ``notes`` (structured reasons for the explanation),
  ``response_headers`` (added to the answer), the decision and every model call (``attempts``);
* the clock: ``t0`` (monotonic start) and ``ts`` (wall-clock start).

Stages read and write it; nothing in it knows about HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from turnout.types import ChatRequest, Decision, Reason, Usage

if TYPE_CHECKING:
    from turnout.gateway.chain import Attempt
    from turnout.gateway.keys import KeySpec
    from turnout.gateway.routes import RouteOverrides

#: embeds ``text`` with the named embedder (the gateway's shared embedding service)
EmbedFn = Callable[[str, str], Awaitable[np.ndarray]]


class RequestContext:
    """Everything known about one request, handed from stage to stage.

    Example (inside a stage)::

        async def on_request(self, ctx: RequestContext) -> Outcome | None:
            vec = await ctx.embedding("minilm")          # computed once, shared with the router
            ctx.signals["domain"] = self.classifier.predict(vec).label
            return None
    """

    def __init__(
        self,
        request: ChatRequest,
        request_id: str,
        *,
        headers: Mapping[str, str] | None = None,
        embed: EmbedFn | None = None,
        dry_run: bool = False,
    ) -> None:
        self.request = request
        self.request_id = request_id
        #: request metadata, names lower-cased (x-turnout-tags, x-session-id, ...): never the API key
        self.headers: dict[str, str] = dict(headers or {})
        #: the API key's spec once authenticated (None: no key store, or not authenticated yet)
        self.key: KeySpec | None = None
        #: the route or model the request is served by; starts as the one asked for, a guard may redirect it
        self.target = request.model
        #: models a stage restricted this request to (None: no restriction)
        self.restrict: frozenset[str] | None = None
        #: True for /v1/route: stages report what they would do, no model is called, nothing is charged
        self.dry_run = dry_run
        self.t0 = time.perf_counter()
        self.ts = time.time()
        self.signals: dict[str, Any] = {}
        self.notes: list[Reason] = []
        self.response_headers: dict[str, str] = {}
        self.decision: Decision | None = None
        self.rule: str | None = None
        self.attempts: list[Attempt] = []
        #: the model whose answer the client gets ("" until known; "cache" or a guard's name when no model answered)
        self.model = ""
        #: what produced the answer: "model", "cache" or the name of the stage that answered
        self.answered_by = "model"
        self.ttft_s: float | None = None
        self.usage: Usage | None = None
        self.response_text: str | None = None
        #: the USD held against the key at admission (0 when nothing was held)
        self.held_usd = 0.0
        #: True once the request has been paid for, counted and logged (it is, exactly once)
        self.settled = False
        #: the prefix key the endpoint balancers place this request by (computed on first use)
        self.balance_key: Any = None
        #: stages added for this request only (a matched decision rule's plugins); they run in their phase,
        #: after the configured stages of that phase
        self.plugins: list[Any] = []
        #: how a matched decision rule changes the route's decision (its router, lambda, cost cap); None: unchanged
        self.overrides: RouteOverrides | None = None
        #: what a stage keeps between its own hooks for this request, keyed by the stage (the cache's fingerprint)
        self.stage_data: dict[Any, Any] = {}
        self._embed = embed
        self._vectors: dict[str, np.ndarray] = {}
        self._views: dict[str, str] = {}

    # -- text views (computed once) ---------------------------------------------------------
    @property
    def prompt_text(self) -> str:
        """The user turns, latest last: what routers were trained on (:meth:`ChatRequest.prompt_text`)."""
        v = self._views.get("prompt")
        if v is None:
            v = self._views["prompt"] = self.request.prompt_text()
        return v

    @property
    def last_user_text(self) -> str:
        """The text of the last user message ("" when there is none; :meth:`ChatRequest.last_user_text`)."""
        v = self._views.get("last")
        if v is None:
            v = self._views["last"] = self.request.last_user_text()
        return v

    @property
    def system_text(self) -> str:
        """The system (and developer) messages, joined by blank lines (:meth:`ChatRequest.system_text`)."""
        v = self._views.get("system")
        if v is None:
            v = self._views["system"] = self.request.system_text()
        return v

    @property
    def conversation_text(self) -> str:
        """Every message as ``role: text`` lines, in order (:meth:`ChatRequest.conversation_text`)."""
        v = self._views.get("conversation")
        if v is None:
            v = self._views["conversation"] = self.request.conversation_text()
        return v

    # -- the shared embedding -----------------------------------------------------------------
    async def embedding(self, embedder: str, text: str | None = None) -> np.ndarray:
        """The prompt's embedding by ``embedder`` (default text: :attr:`prompt_text`), computed once per request.

        The router, a domain guard and the semantic cache ask for the same vector; only the first one
        pays for it. A ``text`` equal to the prompt is the prompt (its vector is shared); another one (the
        last user message of a longer conversation, say) is embedded and kept separately.
        """
        prompt = self.prompt_text
        if text is None or text == prompt:
            key, text = embedder, prompt
        else:
            key = f"{embedder}\x00{text}"
        vec = self._vectors.get(key)
        if vec is None:
            if self._embed is None:
                raise RuntimeError("this request context has no embedding service (built outside a gateway)")
            vec = self._vectors[key] = await self._embed(embedder, text)
        return vec

    def replace_request(self, request: ChatRequest) -> None:
        """Serve ``request`` from now on (a guard rewrote it, e.g. redacted PII before it leaves).

        The text views and embeddings of the old request are dropped, so every later stage, the router and
        the request log see the new one; ``target`` and ``restrict`` are kept.
        """
        self.request = request
        self._views.clear()
        self._vectors.clear()

    def system_changed(self) -> None:
        """The system messages were changed in place (a plugin set a system prompt): drop the views that show them.

        The user turns are unchanged, so the prompt's embedding (the router's, the cache's) stays valid.
        """
        self._views.pop("system", None)
        self._views.pop("conversation", None)

    # -- bookkeeping ----------------------------------------------------------------------------
    def note(self, kind: str, detail: str, **data: Any) -> None:
        """Record a structured reason for the explanation (decision, /v1/route, the log)."""
        self.notes.append(Reason(kind, detail, data))

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    @property
    def cost_usd(self) -> float:
        """What every model call of this request cost so far (rejected cascade steps included)."""
        return sum(a.cost_usd for a in self.attempts)

    def __repr__(self) -> str:
        return f"RequestContext({self.request_id}, target={self.target!r}, model={self.model!r})"


__all__ = ["EmbedFn", "RequestContext"]
