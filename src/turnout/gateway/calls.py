"""One model call of a plan: a chain of models (with fallbacks, retries, endpoints), paid for and recorded.

Plans (:mod:`turnout.gateway.plans`) are made of model calls: a single plan makes one, a cascade one per
step it reaches, a fan-out one per member plus its aggregator. :class:`ModelCaller` makes them, the same
way for every plan:

* :meth:`ModelCaller.complete` walks the chain until a model returns a whole answer;
* :meth:`ModelCaller.open_stream` walks it until a model has produced its *first chunk* (the streaming
  commit rule: a failure before that falls back transparently, after it the stream is committed).

Every try lands in ``ctx.attempts`` as an :class:`~turnout.gateway.chain.Attempt` tagged with its role and
step, and every answer's usage is priced at its model's price there, so the request's cost is the sum of
its calls (a cascade's rejected answers included). Usage a provider reports is trusted only when it is
sane (non-negative integers under a bound); otherwise it is estimated from the text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from turnout.errors import BackendError, BackendProtocolError, BackendTimeoutError
from turnout.gateway.chain import NO_KEY, Attempt, Chain
from turnout.gateway.endpoints import Endpoint, ModelTarget
from turnout.tokens import MAX_SANE_TOKENS, estimate_prompt_tokens, estimate_tokens, sane_count
from turnout.types import ChatRequest, ChatResponse, StreamChunk, Usage

if TYPE_CHECKING:
    from turnout.gateway.context import RequestContext
    from turnout.gateway.parts import GatewayParts

log = logging.getLogger(__name__)


def sane_usage(usage: Usage | None, request: ChatRequest, text: str | None) -> Usage:
    """``usage`` if both counts are non-negative integers under :data:`MAX_SANE_TOKENS`, else an estimate.

    Accounting must never be skipped nor go negative: an upstream that reports ``-1000000`` or ``1e400``
    tokens is paid for at the estimate of what it sent.
    """
    if usage is not None and sane_count(usage.prompt_tokens) and sane_count(usage.completion_tokens):
        return usage
    return Usage(estimate_prompt_tokens(request.messages), estimate_tokens(text or ""))


def price_attempt(attempt: Attempt, target: ModelTarget, usage: Usage) -> None:
    """Set ``attempt``'s usage and its cost at ``target``'s price."""
    attempt.usage = usage
    attempt.cost_usd = target.price.cost(usage.prompt_tokens, usage.completion_tokens)


@dataclass
class OpenStream:
    """A stream committed to one model: its first chunk is in, the rest is ``upstream``'s.

    ``attempt`` is the call's record (filled in with usage and cost when the stream ends); ``chain`` frees
    the endpoint when it does.
    """

    target: ModelTarget
    endpoint: Endpoint
    first: StreamChunk
    upstream: AsyncIterator[StreamChunk]
    attempt: Attempt
    chain: Chain
    ttft_s: float


class ModelCaller:
    """Makes the model calls of one request's plan (see the module docstring)."""

    def __init__(self, gw: GatewayParts, ctx: RequestContext) -> None:
        self.gw = gw
        self.ctx = ctx

    def chain(self, models: Sequence[str], *, role: str = "answer", step: int = 0) -> Chain:
        ctx, gw = self.ctx, self.gw
        route = ctx.decision.route if ctx.decision is not None else ctx.target
        return Chain(
            gw.targets,
            models,
            ctx.attempts,
            metrics=gw.metrics,
            usable=gw.usable_for(ctx),
            key_name=getattr(ctx.key, "name", None),
            route=route,
            balance_key=gw.balance_key(ctx) if gw.balanced else NO_KEY,
            role=role,
            step=step,
        )

    async def complete(
        self, models: Sequence[str], *, request: ChatRequest | None = None, role: str = "answer", step: int = 0
    ) -> tuple[ChatResponse, Attempt]:
        """The first whole answer along ``models`` (``[model] + fallbacks``); raises the exhausted chain's error.

        Cancelling the call (the client hung up) cancels the try in flight and ends the chain, with no
        retry and no fallback.
        """
        req = request or self.ctx.request
        chain = self.chain(models, role=role, step=step)
        async for t in chain:
            ep = chain.endpoint
            assert ep is not None
            try:
                async with asyncio.timeout(t.timeouts.total):
                    resp = await ep.backend.complete(req, model=t.upstream, timeouts=t.timeouts)
            except TimeoutError:
                chain.failed(
                    BackendTimeoutError(
                        f"no complete answer within {t.timeouts.total}s", backend=ep.backend.name, model=t.name, phase="total"
                    )
                )
            except BackendError as exc:
                chain.failed(exc)
            except BaseException:
                chain.abandoned()
                raise
            else:
                ep.breaker.record_success()
                attempt = chain.succeeded()
                usage = sane_usage(resp.usage, req, resp.content)
                if usage is not resp.usage:
                    resp.usage = usage
                    if isinstance(resp.body, dict):
                        resp.body["usage"] = usage.to_dict()
                price_attempt(attempt, t, usage)
                return resp, attempt
        raise chain.exhausted()

    async def open_stream(
        self, models: Sequence[str], *, request: ChatRequest | None = None, role: str = "answer", step: int = 0
    ) -> OpenStream:
        """A stream along ``models`` that has produced its first chunk (earlier failures fell back)."""
        req = request or self.ctx.request
        chain = self.chain(models, role=role, step=step)
        async for t in chain:
            ep = chain.endpoint
            assert ep is not None
            t_start = time.perf_counter()
            upstream = ep.backend.stream(req, model=t.upstream, timeouts=t.timeouts).__aiter__()
            try:
                async with asyncio.timeout(t.timeouts.first_token):
                    first = await upstream.__anext__()
            except StopAsyncIteration:
                err: BackendError = BackendProtocolError(
                    "the stream ended before its first event", backend=ep.backend.name, model=t.name
                )
            except TimeoutError:
                err = BackendTimeoutError(
                    f"no first token within {t.timeouts.first_token}s", backend=ep.backend.name, model=t.name, phase="first_token"
                )
            except BackendError as exc:
                err = exc
            except BaseException:
                chain.abandoned()
                await close_quietly(upstream)
                raise
            else:
                # committed: the breaker's verdict and the endpoint's release wait for the end of the stream
                ttft = time.perf_counter() - t_start
                attempt = chain.succeeded(ttft_s=ttft, release=False)
                return OpenStream(t, ep, first, upstream, attempt, chain, ttft)
            await close_quietly(upstream)
            chain.failed(err)
        raise chain.exhausted()


async def close_quietly(it: AsyncIterator[Any]) -> None:
    """Close an upstream iterator; an error it raises while closing was already counted."""
    aclose = getattr(it, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except BackendError:
        pass
    except Exception:  # a backend's bug while closing must not hide the request's own outcome
        log.debug("error while closing an upstream stream", exc_info=True)


__all__ = ["MAX_SANE_TOKENS", "ModelCaller", "OpenStream", "close_quietly", "price_attempt", "sane_usage"]
