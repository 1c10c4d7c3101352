"""A cached answer streams like a live one: exact content, role first, finish last; and back into a body."""

from __future__ import annotations

from typing import Any

import pytest

from turnout.cache import assemble_body, replay_chunks

TEXTS = [
    "",
    "Yes.",
    "Boil water at 100 °C at sea level; at altitude it boils lower. 🌋 Ünïcödé  double  spaces\nand lines\n",
    "x" * 1000,
    "word " * 97,
]


def completion(content: str | None, **message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def joined(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("size", [1, 7, 24, 4096])
def test_concatenated_content_is_the_cached_content(text: str, size: int) -> None:
    chunks = replay_chunks(completion(text), chunk_chars=size)
    assert joined(chunks) == text
    assert all(len(c["choices"][0]["delta"].get("content", "")) <= size for c in chunks)
    first, last = chunks[0], chunks[-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert last["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert last["usage"] == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert all(
        c["object"] == "chat.completion.chunk"
        and c["id"] == "chatcmpl-abc"
        and c["model"] == "m"
        and c["system_fingerprint"] == "fp_1"
        for c in chunks
    )
    assert assemble_body(chunks)["choices"][0]["message"] == {"role": "assistant", "content": text}


def test_pieces_break_after_spaces_and_ids_can_be_fresh() -> None:
    chunks = replay_chunks(
        completion("the quick brown fox jumps over the lazy dog"), chunk_chars=12, id="chatcmpl-new", created=5
    )
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert pieces == ["the quick ", "brown fox ", "jumps over ", "the lazy dog"]
    assert {c["id"] for c in chunks} == {"chatcmpl-new"} and {c["created"] for c in chunks} == {5}


def test_tool_calls_and_refusals_round_trip() -> None:
    calls = [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "other", "arguments": "{}"}},
    ]
    body = completion(None, tool_calls=calls)
    body["choices"][0]["finish_reason"] = "tool_calls"
    chunks = replay_chunks(body)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    back = assemble_body(chunks)
    assert back["choices"][0]["message"] == {"role": "assistant", "content": None, "tool_calls": calls}
    refusal = assemble_body(replay_chunks(completion("", refusal="I can't help with that.")))
    assert refusal["choices"][0]["message"]["refusal"] == "I can't help with that."


def test_assemble_a_live_stream_with_fragmented_tool_arguments() -> None:
    head = {"id": "chatcmpl-live", "object": "chat.completion.chunk", "created": 9, "model": "m"}
    stream = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {
            **head,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]
                    },
                    "finish_reason": None,
                }
            ],
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}, "finish_reason": None}
            ],
        },
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, "finish_reason": None}
            ],
        },
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**head, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    ]
    body = assemble_body(stream)
    assert body["id"] == "chatcmpl-live" and body["object"] == "chat.completion" and body["created"] == 9
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Hello",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
    }
    assert body["usage"]["total_tokens"] == 3


def test_bad_bodies_are_refused() -> None:
    with pytest.raises(ValueError, match="one choice"):
        replay_chunks({"choices": []})
    with pytest.raises(ValueError, match="chunk_chars"):
        replay_chunks(completion("x"), chunk_chars=0)
