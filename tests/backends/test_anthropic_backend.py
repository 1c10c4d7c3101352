"""AnthropicBackend: chat ↔ messages translation, against a scripted Anthropic-protocol server."""

from __future__ import annotations

import json

import pytest

from turnout.backends.anthropic import DEFAULT_MAX_TOKENS, AnthropicBackend, to_chat_completion, to_messages_request
from turnout.backends.base import Timeouts
from turnout.errors import BackendConnectionError, BackendProtocolError, BackendStatusError
from turnout.testing.scripted import Script, ScriptedServer, Step
from turnout.types import ChatRequest

FAST = Timeouts(connect=1.0, first_token=0.5, total=2.0)
REQ = ChatRequest(
    model="auto",
    messages=[
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is 2+2?"},
    ],
    params={"stop": "END", "temperature": 0.1},
)


@pytest.fixture
def server():
    with ScriptedServer(Script(Step(text="It is four.", prompt_tokens=9, completion_tokens=4)), protocol="anthropic") as srv:
        yield srv


@pytest.fixture
async def backend(server):
    async with AnthropicBackend("claude", server.root_url, api_key="sk-ant") as b:
        yield b


def test_request_translation_covers_system_roles_stop_and_tools():
    req = ChatRequest(
        model="auto",
        messages=[
            {"role": "system", "content": "A"},
            {"role": "developer", "content": "B"},
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "user", "content": [{"type": "text", "text": "and Bergen"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "wx", "arguments": '{"city": "Oslo"}'}}],
            },
            {"role": "tool", "tool_call_id": "t1", "content": "rain"},
        ],
        params={
            "stop": ["X", "Y"],
            "max_completion_tokens": 77,
            "n": 2,
            "user": "u1",
            "tools": [{"type": "function", "function": {"name": "wx", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "wx"}},
        },
    )
    body = to_messages_request(req, "claude-x")
    assert body["system"] == "A\n\nB"
    assert body["model"] == "claude-x" and body["max_tokens"] == 77
    assert body["stop_sequences"] == ["X", "Y"]
    assert "n" not in body
    assert body["metadata"] == {"user_id": "u1"}
    # consecutive user turns merge; roles alternate
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    assert [b["text"] for b in body["messages"][0]["content"]] == ["weather in Oslo?", "and Bergen"]
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "t1", "name": "wx", "input": {"city": "Oslo"}}]
    assert body["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}]
    assert body["tools"] == [{"name": "wx", "description": "", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "tool", "name": "wx"}


def test_response_translation_text_tools_and_stop_reason():
    msg = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "t9", "name": "wx", "input": {"city": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 3},
    }
    out = to_chat_completion(msg)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "t9" and json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert out["usage"] == {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18}


async def test_complete_against_scripted_anthropic(server, backend):
    resp = await backend.complete(REQ, model="claude-x")
    assert resp.content == "It is four."
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (9, 4)
    assert resp.body["object"] == "chat.completion"
    sent = server.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.body["system"] == "Be terse." and sent.body["stop_sequences"] == ["END"]
    assert sent.body["max_tokens"] == DEFAULT_MAX_TOKENS
    assert sent.headers["x-api-key"] == "sk-ant" and sent.headers["anthropic-version"] == "2023-06-01"


async def test_stream_translates_events_to_chunks_with_usage_last(server, backend):
    chunks = [c async for c in backend.stream(REQ, model="claude-x")]
    assert chunks[0].body["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c.text for c in chunks) == "It is four."
    assert all(c.body["object"] == "chat.completion.chunk" for c in chunks)
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (9, 4)
    assert server.requests[-1].body["stream"] is True


@pytest.mark.parametrize(("status", "retryable"), [(529, True), (429, True), (500, True), (400, False), (401, False)])
async def test_status_errors_keep_retryable_flag(server, backend, status, retryable):
    server.script.queue.append(Step(fault="status", status=status))
    with pytest.raises(BackendStatusError) as info:
        await backend.complete(REQ, model="claude-x", timeouts=FAST)
    assert info.value.status == status and info.value.retryable is retryable
    assert f"scripted {status} failure" in str(info.value)


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (Step(fault="cut", text="a b c d"), BackendProtocolError),
        (Step(fault="malformed"), BackendProtocolError),
        (Step(fault="reset"), BackendConnectionError),
        (Step(fault="status", status=529), BackendStatusError),
    ],
    ids=["cut", "malformed", "reset", "529"],
)
async def test_stream_faults(server, backend, step, error):
    server.script.queue.append(step)
    with pytest.raises(error):
        async for _ in backend.stream(REQ, model="claude-x", timeouts=FAST):
            pass
    assert server.count == 1


@pytest.mark.parametrize(("prompt_tokens", "completion_tokens"), [(-1000000, 4), (9, -3), (10**12, 4), (9, 10**10)])
async def test_insane_token_counts_are_replaced_by_estimates(prompt_tokens, completion_tokens, caplog):
    from turnout.tokens import estimate_prompt_tokens, estimate_tokens

    step = Step(text="It is four.", prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    with ScriptedServer(Script(step), protocol="anthropic") as srv:
        async with AnthropicBackend("claude", srv.root_url, api_key="sk-ant") as b:
            resp = await b.complete(REQ, model="claude-x")
            chunks = [c async for c in b.stream(REQ, model="claude-x")]
    want_prompt = prompt_tokens if prompt_tokens >= 0 and prompt_tokens <= 10**9 else estimate_prompt_tokens(REQ.messages)
    want_completion = completion_tokens if 0 <= completion_tokens <= 10**9 else estimate_tokens("It is four.")
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (want_prompt, want_completion)
    assert resp.body["usage"]["prompt_tokens"] == want_prompt and resp.body["usage"]["completion_tokens"] == want_completion
    final = chunks[-1]
    assert final.usage is not None and final.usage.prompt_tokens == want_prompt
    assert final.usage.completion_tokens == want_completion and final.body["usage"] == final.usage.to_dict()
    assert sum("invalid token count" in r.getMessage() for r in caplog.records) == 1  # once per backend


@pytest.mark.parametrize("content", ["[5]", '[{"type": "text", "text": 5}]', '"text"'])
async def test_a_messages_answer_with_blocks_of_the_wrong_shape_is_a_protocol_error(content):
    import asyncio

    body = (
        '{"id": "m", "type": "message", "model": "c", "stop_reason": "end_turn", "content": '
        + content
        + ', "usage": {"input_tokens": 3, "output_tokens": 1}}'
    ).encode()

    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        await r.readexactly(int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]))
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        await w.drain()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with AnthropicBackend("claude", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", api_key="k") as b:
        with pytest.raises(BackendProtocolError):
            await b.complete(REQ, model="claude-x")
    server.close()
