"""The real llama.cpp server with both PyPI GGUF models (slow: real models on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from turnout.backends.llamacpp import LlamaCppServer, cache_dir, default_fleet_models
from turnout.backends.openai import QA_TEMPLATE, OpenAIBackend
from turnout.errors import BackendConnectionError
from turnout.types import ChatRequest

pytestmark = [pytest.mark.slow, pytest.mark.llama]

QUESTION = ChatRequest(
    model="auto",
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    params={"max_tokens": 12, "temperature": 0},
)


async def test_smollm2_chat_complete_and_stream(llama_fleet):
    async with OpenAIBackend("smollm2", llama_fleet.smollm2.base_url) as b:
        resp = await b.complete(QUESTION, model="smollm2")
        assert (resp.content or "").strip() != ""
        assert resp.usage is not None and 0 < resp.usage.completion_tokens <= 12
        chunks = [c async for c in b.stream(QUESTION, model="smollm2")]
    text = "".join(c.text for c in chunks)
    # greedy decoding (temperature 0): the streamed text is the same answer, nothing lost in SSE parsing
    assert text == resp.content
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length")
    # llama.cpp sends no usage when streaming: the backend counted one token per event
    assert last.usage is not None and last.usage.completion_tokens == sum(1 for c in chunks if c.text)
    assert last.usage.prompt_tokens > 0


async def test_concurrent_streams_are_queued_not_cut_off(llama_fleet):
    """llama_cpp.server aborts a stream in progress when a new request comes, unless told not to."""
    import asyncio

    async with OpenAIBackend("smollm2", llama_fleet.smollm2.base_url) as b:

        async def one() -> list:
            return [c async for c in b.stream(QUESTION, model="smollm2")]

        runs = await asyncio.gather(*(one() for _ in range(3)))
    for chunks in runs:  # every stream ran to its end, none cut short by the next request
        assert chunks and chunks[-1].finish_reason in ("stop", "length")
        assert "".join(c.text for c in chunks).strip()


async def test_gemma_base_model_through_completion_template(llama_fleet):
    async with OpenAIBackend("gemma", llama_fleet.gemma.base_url, completion_template=QA_TEMPLATE) as b:
        resp = await b.complete(QUESTION, model="gemma3-270m")
        assert resp.body["object"] == "chat.completion"
        assert (resp.content or "").strip() != ""  # a chat request to this base model would come back empty
        chunks = [c async for c in b.stream(QUESTION, model="gemma3-270m")]
    assert "".join(c.text for c in chunks) == resp.content
    assert all(c.body["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].finish_reason in ("stop", "length") and chunks[-1].usage is not None


def test_fleet_models_come_from_pypi_packages():
    models = default_fleet_models()
    assert models["smollm2"].stat().st_size > 50_000_000
    assert models["gemma3-270m"].stat().st_size > 200_000_000
    assert models["gemma3-270m"].parent == cache_dir()


async def test_server_stops_cleanly_without_orphans(tmp_path):
    srv = LlamaCppServer(default_fleet_models()["smollm2"], log_path=tmp_path / "llama.log", n_ctx=512)
    async with srv:
        proc = srv.process
        assert proc is not None and srv.running
        pid = proc.pid
    assert proc.poll() is not None  # reaped
    assert not os.path.exists(f"/proc/{pid}") or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    assert (tmp_path / "llama.log").exists()
    assert not srv.running


def test_missing_model_file_says_so(tmp_path):
    with pytest.raises(BackendConnectionError, match="does not exist"):
        LlamaCppServer(tmp_path / "nope.gguf").start()


def test_child_launcher_turns_off_extra_buffer_types_on_amx_cpus():
    from turnout.backends._llama_child import cpu_has_amx, extra_bufts_wanted

    amx = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f amx_bf16 amx_tile amx_int8\n"
    plain = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n"
    assert cpu_has_amx(amx) and not cpu_has_amx(plain) and not cpu_has_amx("")
    assert extra_bufts_wanted({}, plain) and not extra_bufts_wanted({}, amx)
    # the environment variable overrides detection both ways
    assert extra_bufts_wanted({"TURNOUT_LLAMA_EXTRA_BUFTS": "1"}, amx)
    assert not extra_bufts_wanted({"TURNOUT_LLAMA_EXTRA_BUFTS": "0"}, plain)
