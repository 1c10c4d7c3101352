"""AnthropicBackend against the scripted Anthropic server: tool calls (streamed and whole) and image content."""

from __future__ import annotations

import json

import pytest

from turnout.backends.anthropic import AnthropicBackend, to_messages_request
from turnout.backends.base import Timeouts
from turnout.testing.scripted import Script, ScriptedServer, Step
from turnout.types import ChatRequest

FAST = Timeouts(connect=1.0, first_token=1.0, total=3.0)
CALLS = (
    {"id": "toolu_01", "name": "get_weather", "arguments": json.dumps({"city": "Oslo", "unit": "celsius"})},
    {"id": "toolu_02", "name": "get_time", "arguments": json.dumps({"tz": "Europe/Oslo"})},
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.fixture
def server():
    step = Step(text="Let me check.", tool_calls=CALLS, prompt_tokens=30, completion_tokens=12)
    with ScriptedServer(Script(step), protocol="anthropic") as srv:
        yield srv


@pytest.fixture
async def backend(server):
    async with AnthropicBackend("claude", server.root_url, api_key="sk-ant") as b:
        yield b


def assemble(chunks) -> tuple[str, dict[int, dict], list[str | None]]:
    """What an OpenAI client rebuilds from a stream: the text, each tool call by index, the finish reasons."""
    text, calls, finishes = "", {}, []
    for c in chunks:
        choice = c.body["choices"][0]
        delta = choice["delta"]
        text += delta.get("content") or ""
        for tc in delta.get("tool_calls") or []:
            call = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
            call["id"] = tc.get("id") or call["id"]
            fn = tc.get("function") or {}
            call["name"] = fn.get("name") or call["name"]
            call["arguments"] += fn.get("arguments") or ""
        finishes.append(choice["finish_reason"])
    return text, calls, finishes


async def test_streamed_tool_calls_arrive_as_openai_deltas(server, backend) -> None:
    req = ChatRequest("auto", [{"role": "user", "content": "weather and time in Oslo?"}], params={"tools": TOOLS})
    chunks = [c async for c in backend.stream(req, model="claude-x", timeouts=FAST)]
    text, calls, finishes = assemble(chunks)
    assert text == "Let me check."
    assert [calls[i]["id"] for i in sorted(calls)] == ["toolu_01", "toolu_02"]
    assert [calls[i]["name"] for i in sorted(calls)] == ["get_weather", "get_time"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Oslo", "unit": "celsius"}
    assert json.loads(calls[1]["arguments"]) == {"tz": "Europe/Oslo"}
    # each call's arguments came in several fragments, and only the last chunk finishes
    assert sum(1 for c in chunks for tc in c.body["choices"][0]["delta"].get("tool_calls") or [] if tc["index"] == 0) >= 3
    assert finishes[-1] == "tool_calls" and not any(finishes[:-1])
    assert chunks[-1].usage is not None and (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (30, 12)
    # the first delta of a call carries its id, type and name, as OpenAI's do
    first = next(tc for c in chunks for tc in c.body["choices"][0]["delta"].get("tool_calls") or [])
    assert first["type"] == "function" and first["function"] == {"name": "get_weather", "arguments": ""}
    sent = server.requests[-1].body
    assert [t["name"] for t in sent["tools"]] == ["get_weather", "get_time"] and sent["stream"] is True


async def test_whole_answer_with_tool_calls(server, backend) -> None:
    req = ChatRequest("auto", [{"role": "user", "content": "weather?"}], params={"tools": TOOLS, "tool_choice": "required"})
    resp = await backend.complete(req, model="claude-x", timeouts=FAST)
    choice = resp.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me check."
    calls = choice["message"]["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("toolu_01", "function", "get_weather"),
        ("toolu_02", "function", "get_time"),
    ]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo", "unit": "celsius"}
    assert server.requests[-1].body["tool_choice"] == {"type": "any"}


async def test_the_tool_round_trip_is_sent_back_as_tool_use_and_tool_result(server, backend) -> None:
    messages = [
        {"role": "user", "content": "weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_01", "content": "rain, 7 C"},
    ]
    server.script.queue.append(Step(text="It rains."))
    resp = await backend.complete(ChatRequest("auto", messages, params={"tools": TOOLS}), model="claude-x", timeouts=FAST)
    assert resp.content == "It rains."
    sent = server.requests[-1].body["messages"]
    assert [t["role"] for t in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [{"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo"}}]
    assert sent[2]["content"] == [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "rain, 7 C"}]


async def test_parallel_tool_calls_false_is_passed_on(server, backend) -> None:
    req = ChatRequest("auto", [{"role": "user", "content": "x"}], params={"tools": TOOLS, "parallel_tool_calls": False})
    await backend.complete(req, model="claude-x", timeouts=FAST)
    assert server.requests[-1].body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    req = ChatRequest(
        "auto",
        [{"role": "user", "content": "x"}],
        params={"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": False},
    )
    await backend.complete(req, model="claude-x", timeouts=FAST)
    assert server.requests[-1].body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


async def test_images_in_every_openai_form_reach_anthropic_as_image_blocks(server, backend) -> None:
    server.script.queue.append(Step(text="A red pixel."))
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": "https://example.com/dog.webp"},  # the bare-string form some clients send
    ]
    resp = await backend.complete(ChatRequest("auto", [{"role": "user", "content": content}]), model="claude-x", timeouts=FAST)
    assert resp.content == "A red pixel."
    blocks = server.requests[-1].body["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/dog.webp"}},
    ]


async def test_an_image_returned_by_a_tool_stays_in_the_tool_result(server, backend) -> None:
    server.script.queue.append(Step(text="A chart."))
    messages = [
        {"role": "user", "content": "plot it"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "toolu_09", "type": "function", "function": {"name": "plot", "arguments": "{}"}}],
        },
        {
            "role": "tool",
            "tool_call_id": "toolu_09",
            "content": [
                {"type": "text", "text": "here is the chart"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
    ]
    await backend.complete(ChatRequest("auto", messages), model="claude-x", timeouts=FAST)
    sent = server.requests[-1].body["messages"]
    # an empty assistant text is not sent as an empty block (Anthropic rejects those)
    assert sent[1]["content"] == [{"type": "tool_use", "id": "toolu_09", "name": "plot", "input": {}}]
    assert sent[2]["content"] == [
        {
            "type": "tool_result",
            "tool_use_id": "toolu_09",
            "content": [
                {"type": "text", "text": "here is the chart"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
            ],
        }
    ]


def test_an_unusable_image_url_is_a_clear_request_error() -> None:
    from turnout.errors import InvalidRequestError

    image = {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}
    req = ChatRequest("auto", [{"role": "user", "content": [image]}])
    with pytest.raises(InvalidRequestError, match="base64"):
        to_messages_request(req, "claude-x")


async def test_content_anthropic_cannot_take_is_not_sent_and_not_retried(server, backend) -> None:
    from turnout.errors import UnsupportedRequestError

    audio = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    before = server.count
    for call in ("complete", "stream"):
        with pytest.raises(UnsupportedRequestError, match="input_audio") as info:
            req = ChatRequest("auto", [{"role": "user", "content": audio}])
            if call == "complete":
                await backend.complete(req, model="claude-x", timeouts=FAST)
            else:
                async for _ in backend.stream(req, model="claude-x", timeouts=FAST):
                    pass
        assert info.value.retryable is False and info.value.backend == "claude"
    assert server.count == before
