"""Response stages' stream filters in the pipeline: text held back goes out at the end (with the finish chunk, or
after the last chunk of a stream that has none), chained filters see each other's held-back text, and what the
client was sent is what the log and the completion hooks get."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from turnout.backends.base import Backend, Timeouts
from turnout.gateway import Gateway, ModelTarget
from turnout.gateway.context import RequestContext
from turnout.gateway.metrics import Metrics
from turnout.gateway.requestlog import RequestLog
from turnout.gateway.stages import Stages
from turnout.testing import ScriptedBackend, Step
from turnout.types import ChatRequest, ChatResponse, Price, StreamChunk, Usage

MSG = [{"role": "user", "content": "hi"}]


class Replace:
    """Replaces ``old`` by ``new`` in a stream, holding back any end of the text that may be the start of ``old``."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new, self.buf = old, new, ""

    def feed(self, text: str) -> str:
        self.buf = (self.buf + text).replace(self.old, self.new)
        keep = next((k for k in range(min(len(self.buf), len(self.old) - 1), 0, -1) if self.old.startswith(self.buf[-k:])), 0)
        out, self.buf = (self.buf[:-keep], self.buf[-keep:]) if keep else (self.buf, "")
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class ReplaceStage:
    """A response stage built on :class:`Replace` that also records what its completion hook was told."""

    phase = "response"

    def __init__(self, old: str, new: str) -> None:
        self.name = f"replace-{old}"
        self.old, self.new = old, new
        self.completed: list[str | None] = []

    def on_response(self, ctx: RequestContext, response: ChatResponse) -> ChatResponse:
        return response

    def stream_filter(self, ctx: RequestContext) -> Replace:
        return Replace(self.old, self.new)

    async def on_complete(self, ctx: RequestContext, response: ChatResponse) -> None:
        self.completed.append(response.content)


class NoFinish(Backend):
    """A lax provider whose stream simply ends: no finish_reason, no usage (some plugins' upstreams do)."""

    name = "lax"
    protocol = "lax"

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    async def complete(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> ChatResponse:
        raise NotImplementedError

    async def stream(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> AsyncIterator[StreamChunk]:
        for p in self.pieces:
            yield StreamChunk(
                body={
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "created": 1,
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}],
                },
                text=p,
            )

    async def aclose(self) -> None:
        pass


def gateway(backend: Backend, stages: list[Any], tmp_path: Path) -> Gateway:
    return Gateway(
        {"m": ModelTarget("m", backend, "m", price=Price(1.0, 2.0))},
        metrics=Metrics(),
        request_log=RequestLog(tmp_path / "log.sqlite"),
        stages=Stages(stages),
    )


async def streamed(gw: Gateway) -> tuple[list[StreamChunk], Any]:
    session = await gw.chat_stream(ChatRequest("m", MSG, stream=True))
    chunks = [c async for c in session]
    gw.request_log.flush()
    (row,) = gw.request_log.query(limit=None)
    return chunks, row


async def test_text_held_back_goes_out_with_the_finish_chunk_and_is_what_the_log_and_the_hooks_keep(tmp_path: Path) -> None:
    # two chained filters, "a b" -> "X" then "X c" -> "Y", over the scripted tokens "a ", "b ", "c ", "a": no
    # pattern is ever whole inside one chunk, the second's only exists after the first's, and the text ends in
    # the middle of the first's
    first, second = ReplaceStage("a b", "X"), ReplaceStage("X c", "Y")
    gw = gateway(ScriptedBackend("up", Step(text="a b c a", completion_tokens=4)), [first, second], tmp_path)
    chunks, row = await streamed(gw)
    text = "".join(c.text for c in chunks)
    assert text == "Y a"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].text.endswith("a")  # held back until the end
    assert row.response_text == "Y a" and first.completed == second.completed == ["Y a"]
    assert row.completion_tokens == 4  # usage counts what the model generated, not what the filters let out
    await gw.aclose()


async def test_a_stream_that_ends_without_a_finish_chunk_still_sends_what_the_filters_held_back(tmp_path: Path) -> None:
    stage = ReplaceStage("secret", "[redacted]")
    gw = gateway(NoFinish(["the ", "sec", "ret ", "is ", "sec"]), [stage], tmp_path)
    chunks, row = await streamed(gw)
    assert "".join(c.text for c in chunks) == "the [redacted] is sec"
    assert chunks[-1].text == "sec" and chunks[-1].body["choices"][0]["delta"]["content"] == "sec"
    assert chunks[-1].body["id"] == "c1"  # in the stream's own id
    assert row.status == "ok" and row.response_text == "the [redacted] is sec"
    assert row.completion_tokens == 5  # no usage sent: one content event is about one token
    await gw.aclose()


async def test_a_filter_that_raises_ends_the_stream_with_its_error_logged_as_a_bug_and_paid_for(tmp_path: Path) -> None:
    class Exploding(Replace):
        def feed(self, text: str) -> str:
            if "c" in text:
                raise ZeroDivisionError("a filter's bug")
            return text

    class Stage(ReplaceStage):
        def stream_filter(self, ctx: RequestContext) -> Replace:
            return Exploding("", "")

    backend = ScriptedBackend("up", Step(text="a b c d", completion_tokens=4))
    gw = gateway(backend, [Stage("x", "y")], tmp_path)
    session = await gw.chat_stream(ChatRequest("m", MSG, stream=True))
    got = []
    with pytest.raises(ZeroDivisionError):
        async for c in session:
            got.append(c.text)
    assert got == ["a ", "b "]
    assert backend.cancelled == 1  # the upstream stream was closed, not left running
    ep = gw.targets["m"].endpoints[0]
    assert ep.in_flight == 0 and ep.breaker.state == "closed" and ep.breaker.allow()
    gw.request_log.flush()
    (row,) = gw.request_log.query(limit=None)
    assert (row.status, row.error_kind) == ("error", "internal_error")
    assert row.completion_tokens == 3 and row.cost_usd > 0 and row.response_text == "a b "
    await gw.aclose()


async def test_usage_the_backend_sent_is_what_a_filtered_stream_pays(tmp_path: Path) -> None:
    gw = gateway(
        ScriptedBackend("up", Step(text="a b c", prompt_tokens=11, completion_tokens=7)), [ReplaceStage("b", "")], tmp_path
    )
    chunks, row = await streamed(gw)
    assert "".join(c.text for c in chunks) == "a  c"
    assert (row.prompt_tokens, row.completion_tokens) == (11, 7)
    assert row.cost_usd == pytest.approx(Price(1.0, 2.0).cost(11, 7))
    assert chunks[-1].usage == Usage(11, 7)
    await gw.aclose()


async def test_a_stage_whose_stream_filter_cannot_be_made_frees_the_open_stream_and_is_logged(tmp_path: Path) -> None:
    class Broken(ReplaceStage):
        def stream_filter(self, ctx: RequestContext) -> Replace:
            raise LookupError("a stage's bug while making its filter")

    backend = ScriptedBackend("up", Step(text="a b c d", slow=0.01))
    gw = gateway(backend, [Broken("x", "y")], tmp_path)
    with pytest.raises(LookupError):
        await gw.chat_stream(ChatRequest("m", MSG, stream=True))
    assert backend.cancelled == 1  # the upstream stream that had committed is closed, not left running
    ep = gw.targets["m"].endpoints[0]
    assert ep.in_flight == 0 and ep.breaker.allow()
    gw.request_log.flush()
    (row,) = gw.request_log.query(limit=None)
    assert (row.status, row.error_kind, row.completion_tokens) == ("error", "internal_error", 1)
    assert row.cost_usd > 0  # the first chunk was generated: paid for
    await gw.aclose()
