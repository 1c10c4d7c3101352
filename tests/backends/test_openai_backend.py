"""OpenAIBackend against the real-socket ScriptedServer: answers, streams, every fault."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from turnout.backends._http import iter_sse
from turnout.backends.base import Timeouts
from turnout.backends.llamacpp import free_port
from turnout.backends.openai import QA_TEMPLATE, OpenAIBackend, render_prompt
from turnout.errors import (
    BackendConnectionError,
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeoutError,
)
from turnout.testing.scripted import Rule, Script, ScriptedServer, Step
from turnout.types import ChatRequest

REQ = ChatRequest(
    model="auto",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello please"}],
    params={"temperature": 0.3, "max_tokens": 50, "seed": 7},
)
FAST = Timeouts(connect=1.0, first_token=0.4, total=1.5)


@pytest.fixture
def server():
    with ScriptedServer(Script(Step(text="Hello there, friend."))) as srv:
        yield srv


@pytest.fixture
async def backend(server):
    async with OpenAIBackend("up", server.base_url, api_key="sk-test", headers={"X-Extra": "1"}) as b:
        yield b


async def collect(backend, request=REQ, model="m-1", timeouts=None):
    return [c async for c in backend.stream(request, model=model, timeouts=timeouts)]


async def test_complete_forwards_verbatim_with_concrete_model(server, backend):
    resp = await backend.complete(REQ, model="m-1")
    assert resp.content == "Hello there, friend."
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    sent = server.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "m-1"  # the route name 'auto' never reaches the provider
    assert sent.body["messages"] == REQ.messages
    assert (sent.body["temperature"], sent.body["max_tokens"], sent.body["seed"]) == (0.3, 50, 7)
    assert sent.headers["authorization"] == "Bearer sk-test"
    assert sent.headers["x-extra"] == "1"


async def test_params_cannot_override_model(server, backend):
    req = ChatRequest(model="auto", messages=REQ.messages, params={"model": "sneaky"})
    await backend.complete(req, model="m-1")
    assert server.requests[-1].body["model"] == "m-1"


async def test_stream_ends_with_finish_and_provider_usage(server, backend):
    server.script.default = Step(text="one two three", prompt_tokens=11, completion_tokens=3)
    chunks = await collect(backend)
    assert "".join(c.text for c in chunks) == "one two three"
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 3)
    assert last.body["usage"]["total_tokens"] == 14
    assert server.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_chunk_counts_tokens(server, backend):
    # llama.cpp's server sends no usage chunk: the backend counts one token per content event
    server.script.default = Step(text="a b c d e", stream_usage=False)
    chunks = await collect(backend)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 5
    assert usage.prompt_tokens > 0
    assert chunks[-1].body["usage"]["completion_tokens"] == 5


async def test_stream_keeps_client_stream_options(server, backend):
    req = ChatRequest(model="auto", messages=REQ.messages, params={"stream_options": {"continuous_usage_stats": True}})
    await collect(backend, req)
    assert server.requests[-1].body["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}


@pytest.mark.parametrize(
    ("step", "error", "retryable"),
    [
        (Step(fault="status", status=500), BackendStatusError, True),
        (Step(fault="status", status=503), BackendStatusError, True),
        (Step(fault="status", status=429), BackendStatusError, True),
        (Step(fault="status", status=400), BackendStatusError, False),
        (Step(fault="reset"), BackendConnectionError, True),
        (Step(fault="cut"), BackendConnectionError, True),
        (Step(fault="malformed"), BackendProtocolError, True),
        (Step(fault="hang"), BackendTimeoutError, True),
        (Step(latency=1.0), BackendTimeoutError, True),
    ],
    ids=["500", "503", "429", "400", "reset", "cut", "malformed", "hang", "latency"],
)
async def test_complete_faults(server, backend, step, error, retryable):
    server.script.queue.append(step)
    with pytest.raises(error) as info:
        await backend.complete(REQ, model="m-1", timeouts=FAST)
    assert info.value.retryable is retryable
    assert info.value.backend == "up" and info.value.model == "m-1"
    if isinstance(info.value, BackendStatusError):
        assert info.value.status == step.status
        assert f"scripted {step.status} failure" in str(info.value)  # the provider's own message
    if isinstance(info.value, BackendTimeoutError):
        assert info.value.phase == "first_token"
    assert server.count == 1  # exactly one attempt reached the provider; no hidden retries
    # the pool survives a failed attempt: the next request on the same backend works
    assert (await backend.complete(REQ, model="m-1")).content == "Hello there, friend."


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (Step(fault="status", status=503), BackendStatusError),
        (Step(fault="reset"), BackendConnectionError),
        (Step(fault="cut", text="w1 w2 w3 w4 w5 w6"), BackendProtocolError),
        (Step(fault="malformed"), BackendProtocolError),
        (Step(fault="hang"), BackendTimeoutError),
    ],
    ids=["503", "reset", "cut", "malformed", "hang"],
)
async def test_stream_faults(server, backend, step, error):
    server.script.queue.append(step)
    got: list[str] = []
    with pytest.raises(error):
        async for c in backend.stream(REQ, model="m-1", timeouts=FAST):
            got.append(c.text)
    if step.fault == "cut":
        assert "".join(got) == "w1 w2 w3 "  # the half that arrived was delivered before the error
    else:
        assert got == []  # nothing yielded: a caller may still fall back elsewhere
    assert server.count == 1


async def test_slow_stream_hits_total_timeout(server, backend):
    server.script.queue.append(Step(text="a b c d e f g h", slow=0.2))
    with pytest.raises(BackendTimeoutError) as info:
        await collect(backend, timeouts=Timeouts(connect=1, first_token=0.5, total=0.6))
    assert info.value.phase == "total"


async def test_connection_refused_is_connection_error():
    port = free_port()
    async with OpenAIBackend("dead", f"http://127.0.0.1:{port}/v1") as b:
        with pytest.raises(BackendConnectionError) as info:
            await b.complete(REQ, model="x", timeouts=FAST)
    assert info.value.retryable


async def test_broken_shape_is_protocol_error():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "choices": []})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        b = OpenAIBackend("odd", "http://upstream/v1", client=client)
        with pytest.raises(BackendProtocolError, match="choices"):
            await b.complete(REQ, model="x")
        await b.aclose()
        assert not client.is_closed  # a client passed in stays the caller's to close


async def test_error_event_mid_stream_is_status_error():
    body = (
        'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
        'data: {"error":{"message":"model overloaded","code":503}}\n\n'
    )

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body.encode(), headers={"content-type": "text/event-stream"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        b = OpenAIBackend("odd", "http://upstream/v1", client=client)
        with pytest.raises(BackendStatusError) as info:
            await collect(b)
    assert info.value.status == 503 and "overloaded" in str(info.value)


async def test_sse_parser_handles_multiline_comments_and_crlf():
    async def lines():
        for line in [": keep-alive", "event: delta", 'data: {"a":', "data: 1}", "", "id: 3", "data:[DONE]"]:
            yield line

    events = [e async for e in iter_sse(lines())]
    assert [(e.event, e.data) for e in events] == [("delta", '{"a":\n1}'), ("message", "[DONE]")]
    assert json.loads(events[0].data) == {"a": 1}


def test_render_prompt_frames_system_history_and_last_question():
    msgs = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of Peru?"}]},
    ]
    assert render_prompt(QA_TEMPLATE, msgs) == (
        "You answer briefly.\n\nUser: Hi\nAssistant: Hello.\nQuestion: Capital of Peru?\nAnswer:"
    )


async def test_completion_template_translates_both_ways(server):
    server.script.default = Step(text=" Lima is the capital.")
    async with OpenAIBackend("base", server.base_url, completion_template=QA_TEMPLATE) as b:
        resp = await b.complete(REQ, model="gemma")
        sent = server.requests[-1]
        assert sent.path == "/v1/completions"
        assert sent.body["prompt"] == "Be brief.\n\nQuestion: Say hello please\nAnswer:"
        assert "messages" not in sent.body and sent.body["stop"] == ["\nQuestion:", "\n\n\n"]
        assert resp.body["object"] == "chat.completion"
        assert resp.content == " Lima is the capital."
        assert resp.body["choices"][0]["message"]["role"] == "assistant"

        chunks = await collect(b, model="gemma")
        assert all(c.body["object"] == "chat.completion.chunk" for c in chunks)
        assert "".join(c.body["choices"][0]["delta"].get("content", "") for c in chunks) == " Lima is the capital."
        assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None


async def test_official_openai_client_reads_scripted_server(server):
    # The fake speaks the real wire protocol: the official client parses it.
    openai = pytest.importorskip("openai")
    server.script.rules.append(Rule(match="weather", step=Step(text="Sunny.")))
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="x") as client:
        r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "weather?"}])
        assert r.choices[0].message.content == "Sunny."
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
        )
        parts, usage = [], None
        async for ch in stream:
            if ch.choices:
                parts.append(ch.choices[0].delta.content or "")
            usage = ch.usage or usage
        assert "".join(parts) == "Hello there, friend." and usage.completion_tokens == 3
        with pytest.raises(openai.APIStatusError) as info:
            server.script.queue.append(Step(fault="status", status=400))
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 400


async def test_backend_errors_are_one_tree(server, backend):
    server.script.queue.append(Step(fault="reset"))
    with pytest.raises(BackendError):
        await backend.complete(REQ, model="m-1", timeouts=FAST)


async def test_concurrent_requests_share_a_bounded_keep_alive_pool(server):
    async with OpenAIBackend("up", server.base_url, max_connections=4) as b:
        resps = await asyncio.gather(*(b.complete(REQ, model="m-1") for _ in range(12)))
        assert all(r.content == "Hello there, friend." for r in resps)
        pool = b._transport.pool
        assert 1 <= pool.open_connections <= 4 and pool.idle_connections == pool.open_connections


async def test_a_completion_only_model_refuses_tools_instead_of_ignoring_them() -> None:
    from turnout.errors import UnsupportedRequestError, UpstreamRejectedError
    from turnout.gateway import Backoff, CircuitBreaker, Gateway, ModelTarget, Price

    msgs = [{"role": "user", "content": "weather in Paris?"}]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    with ScriptedServer(Step(text="sunny")) as up:
        async with OpenAIBackend("base", up.base_url, completion_template=QA_TEMPLATE) as b:
            with pytest.raises(UnsupportedRequestError, match="tools cannot be served by a completion-only model"):
                await b.complete(ChatRequest("m", msgs, params={"tools": tools}), model="m")
            with pytest.raises(UnsupportedRequestError, match="response_format"):
                await b.complete(ChatRequest("m", msgs, params={"response_format": {"type": "json_object"}}), model="m")
            assert up.count == 0  # nothing was sent
            # what asks for nothing a completion cannot do is served as before
            ok = await b.complete(
                ChatRequest("m", msgs, params={"tool_choice": "none", "response_format": {"type": "text"}}), model="m"
            )
            assert ok.content and up.count == 1
        # a chain of such models only: the request is the client's to change (a 400), not a 502
        t = ModelTarget(
            name="m",
            backend=OpenAIBackend("base", up.base_url, completion_template=QA_TEMPLATE),
            upstream="m",
            price=Price(1.0, 1.0),
            fallbacks=[],
            timeouts=Timeouts(1.0, 1.0, 2.0),
            attempts=2,
            backoff=Backoff(0.001, 0.002),
            breaker=CircuitBreaker(3, 10.0),
        )
        gw = Gateway({"m": t})
        with pytest.raises(UpstreamRejectedError, match="no model in the chain can take the request"):
            await gw.chat(ChatRequest("m", msgs, params={"tools": tools}))
        await gw.aclose()
