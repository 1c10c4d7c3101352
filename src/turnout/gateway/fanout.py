"""Multi-model answers: the ``fanout`` plan (k models in parallel, one answer aggregated) and the ``rounds`` plan.

**Fan-out** (Router-R1, TCAR, JiSi family; planned by :class:`~turnout.gateway.planners.FanoutPlanner`).
Every member answers in parallel (role ``member``); a member whose chain fails is tolerated while
``min_answers`` answers remain. Then either:

* ``vote``: the answers are compared under :func:`turnout.routing.answers.comparable` (the extracted choice,
  the number, normalised code, a short text) and the plurality wins; on a tie, the group whose first member
  comes first in the plan (list members best first). Answers with no comparable key each count alone. The
  client gets the first winning member's answer, as it came;
* an aggregator model (role ``aggregator``) reads the question and every answer and writes the final one.
  A streamed request gets the aggregator's answer live (its first token after every member has answered).

The cost is the sum of every call (the ledger sums ``ctx.attempts``); the budget hold at admission sums the
members and the aggregator.

**Rounds** (Router-R1's think → route → read loop; :class:`~turnout.gateway.planners.RoundsPlanner`). A router
model (role ``router``) reads the question and either answers it (``<answer>...</answer>``) or asks one of the
plan's models a question (``<search>MODEL: question</search>``); the consulted model's answer (role ``member``)
comes back to it as ``<information>...</information>`` and it goes on. At most ``max_rounds`` consultations,
and none once the request has cost ``max_cost_usd``: then the router is told to answer with what it has.
Whatever the router's last turn says (its ``<answer>``, else its text without the tags) is the answer.

Every member's or round's outcome is in the request's notes (``ctx.note("plan", ...)``) and the
``x-turnout-fanout`` / ``x-turnout-rounds`` response header.

Example::

    plan = Plan("fanout", [PlanStep("a"), PlanStep("b"), PlanStep("c")], params={"vote": True, "min_answers": 2})
    resp = await plan_executor("fanout").complete(ModelCaller(gateway, ctx), plan)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

from turnout.errors import AllBackendsFailedError, BackendError, TurnoutError, UpstreamRejectedError
from turnout.gateway.calls import ModelCaller, OpenStream
from turnout.gateway.cascade import step_request
from turnout.gateway.chain import Attempt
from turnout.gateway.planners import PLAN_ROUNDS
from turnout.routing import answers
from turnout.types import PLAN_FANOUT, ChatRequest, ChatResponse, Plan

#: what the aggregator model is asked after the conversation (the answers follow it)
AGGREGATE_PROMPT = (
    "Several assistants answered the last question above. Their answers follow. Some may be "
    "wrong. Write the single best final answer to the question; reply with that answer only."
)


class FanoutPlan:
    """Executes ``fanout`` plans (see the module docstring)."""

    kind = PLAN_FANOUT

    async def complete(self, caller: ModelCaller, plan: Plan) -> ChatResponse:
        out = await self._run(caller, plan, live=False)
        assert isinstance(out, ChatResponse)
        return out

    async def open_stream(self, caller: ModelCaller, plan: Plan) -> OpenStream | ChatResponse:
        return await self._run(caller, plan, live=True)

    async def _run(self, caller: ModelCaller, plan: Plan, *, live: bool) -> OpenStream | ChatResponse:
        ctx = caller.ctx
        req = step_request(ctx.request, logprobs=False)
        calls = [caller.complete([s.model, *s.fallbacks], role="member", step=i, request=req) for i, s in enumerate(plan.steps)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        got: list[tuple[ChatResponse, Attempt]] = []
        errors: list[TurnoutError] = []
        for r in results:
            if isinstance(r, TurnoutError):
                errors.append(r)
            elif isinstance(r, BaseException):
                raise r  # cancellation or a bug: not a failed member
            else:
                got.append(r)
        need = int(plan.params.get("min_answers") or 1)
        cost = sum(a.cost_usd for _, a in got)
        ctx.note(
            "plan",
            f"fan-out: {len(got)} of {len(plan.steps)} members answered ({need} needed), cost {cost:.6g} USD",
            answered=[a.model for _, a in got],
            failed=len(errors),
            cost=cost,
        )
        if len(got) < max(need, 1):
            raise too_few(errors, route=ctx.decision.route if ctx.decision is not None else None)
        if plan.aggregator is None:
            return self._vote(caller, got, failed=len(errors))
        if len(got) == 1:  # nothing to aggregate: the one answer is the answer
            resp, attempt = got[0]
            attempt.accepted = True
            ctx.model = attempt.model
            ctx.note("plan", f"fan-out: only {attempt.model} answered; kept without aggregation", model=attempt.model)
            return resp
        agg = aggregate_request(ctx.request, [r.content or "" for r, _ in got], stream=live)
        step = len(plan.steps)
        header = ",".join(f"{a.model}:read" for _, a in got) + (f",{len(errors)} failed" if errors else "")
        if live:
            opened = await caller.open_stream([plan.aggregator], role="aggregator", step=step, request=agg)
            opened.attempt.accepted = True
            ctx.model = opened.target.name
            ctx.response_headers["x-turnout-fanout"] = f"{header},{opened.target.name}:aggregated"
            return opened
        resp, attempt = await caller.complete([plan.aggregator], role="aggregator", step=step, request=agg)
        attempt.accepted = True
        ctx.model = attempt.model
        ctx.note(
            "plan",
            f"fan-out: {attempt.model} aggregated {len(got)} answers, cost {attempt.cost_usd:.6g} USD",
            model=attempt.model,
            cost=attempt.cost_usd,
        )
        ctx.response_headers["x-turnout-fanout"] = f"{header},{attempt.model}:aggregated"
        return resp

    def _vote(self, caller: ModelCaller, got: list[tuple[ChatResponse, Attempt]], *, failed: int) -> ChatResponse:
        ctx = caller.ctx
        keys = [answers.comparable(ctx.prompt_text, resp.content or "") for resp, _ in got]
        votes: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            votes.setdefault(k if k is not None else f"\x00alone:{i}", []).append(i)
        # plurality; a tie goes to the group whose first member comes first (members are listed best first)
        winner = max(votes.values(), key=lambda idx: (len(idx), -idx[0]))
        kept = winner[0]
        for i, (_, a) in enumerate(got):
            a.accepted = i == kept
        resp, attempt = got[kept]
        ctx.model = attempt.model
        shown = {
            (k if not k.startswith("\x00") else "(not comparable)"): [got[i][1].model for i in idx] for k, idx in votes.items()
        }
        ctx.note(
            "plan",
            f"fan-out vote: {len(winner)} of {len(got)} agree; kept {attempt.model}'s answer",
            votes=shown,
            kept=attempt.model,
            agree=len(winner),
            answers=len(got),
        )
        ctx.response_headers["x-turnout-fanout"] = ",".join(
            f"{a.model}:{'kept' if i == kept else 'agreed' if i in winner else 'outvoted'}" for i, (_, a) in enumerate(got)
        ) + (f",{failed} failed" if failed else "")
        return resp


def too_few(errors: list[TurnoutError], *, route: str | None) -> TurnoutError:
    """The error of a fan-out with too few answers: every member's backend errors in one
    :class:`~turnout.errors.AllBackendsFailedError` (a 502), or the request's own fault (a 400) when every
    member refused the request itself."""
    if errors and all(isinstance(e, UpstreamRejectedError) for e in errors):
        return errors[0]
    flat: list[BackendError] = []
    for e in errors:
        inner = getattr(e, "errors", None)
        flat += [x for x in inner if isinstance(x, BackendError)] if isinstance(inner, list) else []
    return AllBackendsFailedError(flat, route=route)


def aggregate_request(request: ChatRequest, texts: list[str], *, stream: bool) -> ChatRequest:
    """The aggregator's request: the client's conversation, then one user turn with the answers to weigh."""
    shown = "\n\n".join(f"Answer {i}:\n{t.strip()}" for i, t in enumerate(texts, 1))
    params = dict(request.params) if stream else {k: v for k, v in request.params.items() if k != "stream_options"}
    for k in ("logprobs", "top_logprobs", "n"):
        params.pop(k, None)
    messages = [*request.messages, {"role": "user", "content": f"{AGGREGATE_PROMPT}\n\n{shown}"}]
    return ChatRequest(model=request.model, messages=messages, stream=stream, params=params)


# ------------------------------------------------------------------------------------------ rounds
_SEARCH = re.compile(r"<search>\s*([^:<]+?)\s*:\s*(.*?)\s*</search>", re.DOTALL | re.IGNORECASE)
_ANSWER = re.compile(r"<answer>\s*(.*?)\s*(?:</answer>|\Z)", re.DOTALL | re.IGNORECASE)
_LAST_TURN = "No more models can be consulted ({why} is reached). Give your final answer now, inside <answer></answer>."
_TAGS = re.compile(r"</?(?:search|answer|think|information)>", re.IGNORECASE)


def rounds_system_prompt(models: list[str]) -> str:
    """The router model's instructions: how to consult a model and how to answer."""
    return (
        "You answer the user's question. You may first consult one of these models: "
        f"{', '.join(models)}. To consult one, reply with only <search>MODEL: your question</search>; its answer "
        "will come back inside <information></information>. When you can answer, reply with "
        "<answer>your final answer</answer>."
    )


def parse_turn(text: str) -> tuple[str | None, tuple[str, str] | None]:
    """A router turn's final answer (``<answer>``) or its consultation (``<search>MODEL: question</search>``)."""
    ans = _ANSWER.search(text)
    if ans is not None:
        return ans.group(1), None
    ask = _SEARCH.search(text)
    if ask is not None:
        return None, (ask.group(1).strip(), ask.group(2).strip())
    return None, None


class RoundsPlan:
    """Executes ``rounds`` plans (see the module docstring)."""

    kind = PLAN_ROUNDS

    async def complete(self, caller: ModelCaller, plan: Plan) -> ChatResponse:
        return await self._run(caller, plan)

    async def open_stream(self, caller: ModelCaller, plan: Plan) -> ChatResponse:
        return await self._run(caller, plan)

    async def _run(self, caller: ModelCaller, plan: Plan) -> ChatResponse:
        ctx = caller.ctx
        p = plan.params
        router = str(p.get("router_model") or plan.steps[0].model)
        models = [str(m) for m in p.get("models") or []]
        max_rounds = int(p.get("max_rounds") or 0) if models else 0
        max_cost = p.get("max_cost_usd")
        base = {
            k: v
            for k, v in ctx.request.params.items()
            if k not in ("stream_options", "logprobs", "top_logprobs", "n", "tools", "tool_choice")
        }
        messages: list[dict[str, Any]] = [{"role": "system", "content": rounds_system_prompt(models)}, *ctx.request.messages]
        trail: list[str] = []
        asked = 0
        final = max_rounds == 0
        while True:
            resp, attempt = await caller.complete(
                [router],
                role="router",
                step=2 * asked,
                request=ChatRequest(model=ctx.request.model, messages=list(messages), params=base),
            )
            text = resp.content or ""
            answer, ask = parse_turn(text)
            over = max_cost is not None and ctx.cost_usd >= float(max_cost)
            if ask is not None and answer is None and not final and (asked >= max_rounds or over):
                # capped: the router is told so once, and its next turn is the answer whatever it says
                why = f"the cost cap ({max_cost} USD)" if over else f"the round cap ({max_rounds})"
                messages += [{"role": "assistant", "content": text}, {"role": "user", "content": _LAST_TURN.format(why=why)}]
                ctx.note("plan", f"rounds: {router} asked for another model, but {why} is reached", capped=why)
                final = True
                continue
            if answer is not None or ask is None or final:
                attempt.accepted = True
                final_text = answer if answer is not None else _TAGS.sub("", _SEARCH.sub("", text)).strip()
                _set_content(resp, final_text)
                ctx.model = attempt.model
                ctx.note("plan", f"rounds: {router} answered after {asked} consultation(s)", rounds=asked, cost=ctx.cost_usd)
                trail.append(f"{router}:answered")
                ctx.response_headers["x-turnout-rounds"] = ",".join(trail)
                return resp
            name, question = ask
            target = name if name in models else models[0]
            asked += 1
            try:
                sub, sub_attempt = await caller.complete(
                    [target],
                    role="member",
                    step=2 * asked - 1,
                    request=ChatRequest(model=ctx.request.model, messages=[{"role": "user", "content": question}], params=base),
                )
                info = sub.content or ""
                outcome = f"cost {sub_attempt.cost_usd:.6g} USD"
            except TurnoutError as exc:
                info = f"({target} could not answer: {exc.kind})"
                outcome = f"failed: {exc.kind}"
            ctx.note(
                "plan",
                f"rounds: {router} asked {target}"
                + (f" (it named {name!r}, not one of the plan's models)" if target != name else "")
                + f": {question[:200]!r}; {outcome}",
                round=asked,
                asked=target,
                named=name,
                question=question[:500],
            )
            trail.append(f"{target}:consulted")
            info = f"<information>{info}</information>"
            over = max_cost is not None and ctx.cost_usd >= float(max_cost)
            if asked >= max_rounds or over:  # say so with the information: the next turn is the last
                why = f"the cost cap ({max_cost} USD)" if over else f"the round cap ({max_rounds})"
                info += f"\n{_LAST_TURN.format(why=why)}"
                final = True
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": info}]


def _set_content(resp: ChatResponse, text: str) -> None:
    # a backend answer always has it (the backend checked); nothing to rewrite otherwise
    with contextlib.suppress(KeyError, IndexError, TypeError):
        resp.body["choices"][0]["message"]["content"] = text


__all__ = ["AGGREGATE_PROMPT", "FanoutPlan", "RoundsPlan", "aggregate_request", "parse_turn", "rounds_system_prompt", "too_few"]
