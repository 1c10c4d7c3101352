"""Scripted tool calls: the Step field, the OpenAI wire face and the in-process backend."""

from __future__ import annotations

import json

import httpx
import pytest

from turnout.testing.scripted import Script, ScriptedBackend, ScriptedServer, Step
from turnout.types import ChatRequest

CALL = {"id": "call_1", "name": "lookup", "arguments": json.dumps({"q": "turnout"})}


def test_tool_calls_are_validated_and_json_lists_become_tuples() -> None:
    step = Script.from_dict({"default": {"text": "", "tool_calls": [CALL]}}).default
    assert step.tool_calls == (CALL,) and step.finish == "tool_calls" and Step().finish == "stop"
    with pytest.raises(ValueError, match="id, name and arguments"):
        Step(tool_calls=({"name": "x"},))


def test_openai_wire_face_streams_and_returns_tool_calls() -> None:
    with ScriptedServer(Step(text="", tool_calls=(CALL,))) as srv:
        ask = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
        whole = httpx.post(srv.base_url + "/chat/completions", json=ask).json()
        choice = whole["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        assert choice["message"]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": CALL["arguments"]}
        with httpx.stream(
            "POST",
            srv.base_url + "/chat/completions",
            json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "q"}]},
        ) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    pieces = [tc["function"].get("arguments", "") for e in events for tc in e["choices"][0]["delta"].get("tool_calls", [])]
    assert "".join(pieces) == CALL["arguments"] and len(pieces) > 2
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_in_process_backend_answers_with_the_same_tool_calls() -> None:
    b = ScriptedBackend("s", Step(text="", tool_calls=(CALL,)))
    req = ChatRequest("m", [{"role": "user", "content": "q"}])
    resp = await b.complete(req, model="m")
    assert resp.body["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"
    chunks = [c async for c in b.stream(req, model="m")]
    deltas = [c.body["choices"][0]["delta"] for c in chunks]
    args = "".join(tc["function"].get("arguments", "") for d in deltas for tc in d.get("tool_calls", []))
    assert args == CALL["arguments"] and chunks[-1].finish_reason == "tool_calls"
