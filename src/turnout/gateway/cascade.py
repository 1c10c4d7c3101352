"""The cascade plan executor: ask models cheap → strong, keep the first answer its acceptance signal vouches for.

A cascade plan (:class:`~turnout.types.Plan` of kind ``cascade``, built by
:class:`~turnout.gateway.planners.CascadePlanner`) lists steps, cheap first. Each step is one model call
(``[model, *fallbacks]`` through :class:`~turnout.gateway.calls.ModelCaller`, role ``step``), plus its
probes when its signal compares answers (``samples`` more answers of the same model at a sampling
temperature, or the answers of ``probe`` models: role ``probe``, run concurrently with the step). The
step's acceptance signal (:mod:`turnout.routing.acceptance`) turns the answer into a confidence; the
answer is kept when the confidence is at least the step's threshold, else the next step runs. A signal
that cannot judge (None: no log-probabilities came back, no comparable answer) escalates. The last step's
answer is always kept. ``max_calls`` caps the calls of one request (probes included): when the next step
would take the request over it, the answer in hand is kept (the first step always runs).

**Every call is paid for**: a rejected answer's tokens are priced like any other and summed by the ledger;
each step's :class:`~turnout.gateway.chain.Attempt` carries ``confidence`` and ``accepted``.

**Log-probabilities** are asked for only when the step's signal needs them (``logprobs: true,
top_logprobs: 2`` on a copy of the request, for that call), and removed from the answer the client gets
unless the client asked for them itself. ``stream_options`` is dropped from the non-streamed step calls
(OpenAI refuses it without ``stream``).

**Streaming contract.** A step's answer must be whole before it can be judged, so a streamed request gets
nothing until an answer is accepted; that answer is then replayed as chunks whose concatenated text is the
accepted answer's text exactly. With ``stream: live_last`` (the default) a request that escalates to the
last step streams that step live (its answer is kept whatever it says, so nothing needs to wait for it);
with ``stream: buffer`` the last step is buffered too. The time to the first token is therefore the sum of
the judged steps' whole-answer latencies (``bench/cascade_ttft.py`` measures it).

**The escalation path** (per step: model, signal, value, threshold, cost, accepted) is written into the
request's notes (``ctx.note("plan", ...)``: the decision in the request log), into the calls' child rows
(``confidence``, ``accepted``) and into the ``x-turnout-cascade`` response header
(``smollm2-135m:0.412<0.6:rejected,gemma3-270m:kept``).

Example (a plan written by hand; routes build theirs from config)::

    plan = Plan("cascade", [PlanStep("small", accept="logprob_mean", threshold=0.6), PlanStep("big")])
    resp = await plan_executor("cascade").complete(ModelCaller(gateway, ctx), plan)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnout.errors import ConfigError, TurnoutError
from turnout.gateway.calls import ModelCaller, OpenStream
from turnout.gateway.chain import Attempt
from turnout.routing.acceptance import AcceptanceSignal, AnswerView, create_signal, judge
from turnout.types import PLAN_CASCADE, ChatRequest, ChatResponse, Plan, PlanStep

#: alternatives per token asked for when a signal needs the top-2 margin
MARGIN_TOP = 2
#: a log-probability below this (or not finite) is read as this: one impossible token must not break the mean
FLOOR_LOGPROB = -100.0


# ------------------------------------------------------------------------------------------ log-probabilities
def needs_logprobs(signal: AcceptanceSignal | None) -> bool:
    """Whether ``signal`` reads token log-probabilities (so the step's call must ask for them)."""
    return signal is not None and bool(signal.needs & {"logprobs", "top2_margins"})


def step_request(request: ChatRequest, *, logprobs: bool) -> ChatRequest:
    """The request one judged step sends: the client's, without ``stream_options``, with log-probabilities when
    its signal needs them (at least :data:`MARGIN_TOP` alternatives per token, more if the client asked)."""
    params = {k: v for k, v in request.params.items() if k != "stream_options"}
    if logprobs:
        params["logprobs"] = True
        params["top_logprobs"] = max(request.asked_top_logprobs() or 0, MARGIN_TOP)
    return ChatRequest(model=request.model, messages=request.messages, stream=False, params=params)


def sample_request(request: ChatRequest, temperature: float) -> ChatRequest:
    """One more sample of the same question for self-consistency: another temperature, no seed, no log-probs."""
    drop = {"stream_options", "seed", "logprobs", "top_logprobs", "n"}
    params = {k: v for k, v in request.params.items() if k not in drop}
    params["temperature"] = temperature
    return ChatRequest(model=request.model, messages=request.messages, stream=False, params=params)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    if math.isnan(v):
        return None
    # -inf (a token the model thought impossible) counts as very unlikely; above 0 is no probability
    return min(max(v, FLOOR_LOGPROB), 0.0)


def read_logprobs(body: Mapping[str, Any]) -> tuple[list[float] | None, list[float] | None]:
    """The chosen tokens' log-probabilities and the top-1 − top-2 margins of an answer (OpenAI chat format:
    ``choices[0].logprobs.content[*].logprob / top_logprobs``); None for what the answer does not carry."""
    try:
        content = body["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, None
    if not isinstance(content, list):
        return None, None
    chosen: list[float] = []
    margins: list[float] = []
    for tok in content:
        if not isinstance(tok, dict):
            continue
        lp = _number(tok.get("logprob"))
        if lp is None:
            continue
        chosen.append(lp)
        alts = sorted(
            (v for a in tok.get("top_logprobs") or [] if isinstance(a, dict) and (v := _number(a.get("logprob"))) is not None),
            reverse=True,
        )
        if len(alts) >= 2:
            margins.append(alts[0] - alts[1])
    return (chosen or None), (margins or None)


def strip_logprobs(resp: ChatResponse, client_top: int | None) -> None:
    """Leave the client the log-probabilities it asked for: none (``logprobs: null``, as OpenAI answers when
    not asked), or at most ``client_top`` alternatives per token."""
    choices = resp.body.get("choices") if isinstance(resp.body, dict) else None
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict) or "logprobs" not in choice:
            continue
        if client_top is None:
            choice["logprobs"] = None
            continue
        content = (choice.get("logprobs") or {}).get("content") if isinstance(choice.get("logprobs"), dict) else None
        for tok in content if isinstance(content, list) else []:
            if isinstance(tok, dict) and isinstance(tok.get("top_logprobs"), list):
                tok["top_logprobs"] = tok["top_logprobs"][:client_top]


# ------------------------------------------------------------------------------------------ the executor
@dataclass
class _Answered:
    """One judged answer of the cascade."""

    step: int
    resp: ChatResponse
    attempt: Attempt
    confidence: float | None
    threshold: float | None


def resolve_signal(caller: ModelCaller, step: PlanStep, params: Mapping[str, Any]) -> AcceptanceSignal | None:
    """The step's acceptance signal: the one its route's planner built at start-up, else built now by name."""
    if step.accept is None:
        return None
    d = caller.ctx.decision
    rt = caller.gw.routes.get(d.route) if d is not None else None
    signal_for = getattr(getattr(rt, "plan", None), "signal_for", None)
    if callable(signal_for):
        found = signal_for(step.accept, params)
        if isinstance(found, AcceptanceSignal):
            return found
    try:
        return create_signal(step.accept, **dict(params))
    except TurnoutError as exc:
        raise ConfigError(
            f"cascade step {step.model}: {exc}",
            key="plan.steps.accept",
            fix="name a registered acceptance signal with its params",
        ) from exc


class CascadePlan:
    """Executes ``cascade`` plans (see the module docstring)."""

    kind = PLAN_CASCADE

    async def complete(self, caller: ModelCaller, plan: Plan) -> ChatResponse:
        out = await self._run(caller, plan, live_last=False)
        assert isinstance(out, ChatResponse)
        return out

    async def open_stream(self, caller: ModelCaller, plan: Plan) -> OpenStream | ChatResponse:
        return await self._run(caller, plan, live_last=plan.params.get("stream", "live_last") == "live_last")

    async def _run(self, caller: ModelCaller, plan: Plan, *, live_last: bool) -> OpenStream | ChatResponse:
        ctx = caller.ctx
        options: Sequence[Mapping[str, Any]] = plan.params.get("options") or [{} for _ in plan.steps]
        max_calls = plan.params.get("max_calls")
        client_top = ctx.request.asked_top_logprobs()
        answered: list[_Answered] = []
        failure: BaseException | None = None
        calls = 0
        for i, step in enumerate(plan.steps):
            opts = options[i] if i < len(options) else {}
            last = i == len(plan.steps) - 1
            if last and live_last:
                try:
                    opened = await caller.open_stream([step.model, *step.fallbacks], role="step", step=i)
                except TurnoutError as exc:
                    failure = exc
                    break
                for a in answered:
                    a.attempt.accepted = False
                opened.attempt.accepted = True
                ctx.model = opened.target.name
                ctx.note(
                    "plan",
                    f"cascade step {i}: {opened.target.name} streams live (the last step is always kept)",
                    step=i,
                    model=opened.target.name,
                    signal=None,
                    value=None,
                    threshold=None,
                    cost=None,
                    accepted=True,
                    live=True,
                )
                self._header(ctx, answered, opened.target.name)
                return opened
            signal = resolve_signal(caller, step, opts.get("signal_params") or {})
            try:
                got = await self._step(caller, step, i, signal, opts)
            except TurnoutError as exc:
                failure = exc
                calls += 1
                ctx.note(
                    "plan",
                    f"cascade step {i} ({step.model}) failed: {exc.kind}; " + ("no step left" if last else "escalating"),
                    step=i,
                    model=step.model,
                    error=exc.kind,
                )
                continue
            calls += _calls_of(options, i)
            answered.append(got)
            if needs_logprobs(signal):
                strip_logprobs(got.resp, client_top)
            keep = last or (got.confidence is not None and (step.threshold is None or got.confidence >= step.threshold))
            self._note(ctx, got, signal, keep, last)
            if keep:
                return self._accept(ctx, answered, got)
            got.attempt.accepted = False
            if max_calls is not None and calls + _calls_of(options, i + 1) > max_calls:
                ctx.note("plan", f"cascade: max_calls {max_calls} reached after step {i}", step=i, max_calls=max_calls)
                break
        if answered:
            # the last step failed, or max_calls was reached: the most trusted answer in hand is kept (on a tie,
            # the later step's: a stronger model)
            best = max(reversed(answered), key=lambda a: -1.0 if a.confidence is None else a.confidence)
            ctx.note(
                "plan",
                f"cascade: keeping step {best.step}'s answer ({best.attempt.model})"
                + (f" after the last step failed ({failure})" if failure is not None else ""),
                step=best.step,
                model=best.attempt.model,
            )
            return self._accept(ctx, answered, best)
        assert failure is not None
        raise failure

    async def _step(
        self, caller: ModelCaller, step: PlanStep, i: int, signal: AcceptanceSignal | None, opts: Mapping[str, Any]
    ) -> _Answered:
        """One judged step: its call and its probes, concurrently; the answer's confidence."""
        ctx = caller.ctx
        req = step_request(ctx.request, logprobs=needs_logprobs(signal))
        probes: list[tuple[str, Any]] = []
        for _ in range(int(opts.get("samples") or 0)):
            probes.append(
                (
                    step.model,
                    caller.complete(
                        [step.model],
                        role="probe",
                        step=i,
                        request=sample_request(ctx.request, float(opts.get("sample_temperature", 0.8))),
                    ),
                )
            )
        plain = step_request(ctx.request, logprobs=False)
        for m in opts.get("probe") or []:
            probes.append((m, caller.complete([m], role="probe", step=i, request=plain)))
        main = caller.complete([step.model, *step.fallbacks], role="step", step=i, request=req)
        results = await asyncio.gather(main, *(c for _, c in probes), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, TurnoutError):
                raise r  # cancellation, a bug: not a failed call
        first = results[0]
        if isinstance(first, BaseException):
            raise first
        resp, attempt = first
        others = [(m, r[0].content or "") for (m, _), r in zip(probes, results[1:]) if not isinstance(r, BaseException)]
        token_lps, margins = read_logprobs(resp.body)
        view = AnswerView(
            prompt=ctx.prompt_text,
            answer=resp.content or "",
            model=attempt.model,
            token_logprobs=token_lps,
            top2_margins=margins,
            response_format=_mapping(ctx.request.params.get("response_format")),
            others=tuple(t for _, t in others),
            others_models=tuple(m for m, _ in others) if opts.get("probe") else (),
        )
        confidence = judge(signal, view) if signal is not None else None
        attempt.confidence = confidence
        return _Answered(i, resp, attempt, confidence, step.threshold)

    def _note(self, ctx: Any, got: _Answered, signal: AcceptanceSignal | None, keep: bool, last: bool) -> None:
        value = "cannot judge" if got.confidence is None else f"{got.confidence:.4g}"
        th = got.threshold
        if last:
            verdict = "kept (last step)"
        elif keep:
            verdict = f"accepted ({value} ≥ {th:.4g})" if th is not None else f"accepted ({value})"
        elif got.confidence is None:
            verdict = f"rejected ({signal.name if signal else 'no signal'} cannot judge it)"
        else:
            verdict = f"rejected ({value} < {th:.4g})"
        ctx.note(
            "plan",
            f"cascade step {got.step}: {got.attempt.model} {verdict}, cost {got.attempt.cost_usd:.6g} USD",
            step=got.step,
            model=got.attempt.model,
            signal=signal.name if signal else None,
            value=got.confidence,
            threshold=th,
            cost=got.attempt.cost_usd,
            accepted=keep,
        )

    def _accept(self, ctx: Any, answered: list[_Answered], got: _Answered) -> ChatResponse:
        for a in answered:
            a.attempt.accepted = a is got
        ctx.model = got.attempt.model
        self._header(ctx, answered, got.attempt.model)
        return got.resp

    def _header(self, ctx: Any, answered: list[_Answered], kept: str) -> None:
        parts = []
        for a in answered:
            value = "none" if a.confidence is None else f"{a.confidence:.3g}"
            below = a.threshold is not None and a.confidence is not None and a.confidence < a.threshold
            parts.append(
                f"{a.attempt.model}:{value}"
                + (f"<{a.threshold:.3g}" if below else "")
                + (":kept" if a.attempt.accepted else ":rejected")
            )
        if not any(a.attempt.accepted for a in answered):
            parts.append(f"{kept}:kept")
        ctx.response_headers["x-turnout-cascade"] = ",".join(parts)


def _calls_of(options: Sequence[Mapping[str, Any]], i: int) -> int:
    """The calls step ``i`` makes: its own, its extra samples and its probes."""
    opts = options[i] if i < len(options) else {}
    return 1 + int(opts.get("samples") or 0) + len(opts.get("probe") or [])


def _mapping(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


__all__ = [
    "MARGIN_TOP",
    "CascadePlan",
    "needs_logprobs",
    "read_logprobs",
    "resolve_signal",
    "sample_request",
    "step_request",
    "strip_logprobs",
]
