"""The scripted fake: script order, the in-process face, the wire face, the standalone process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest

from turnout.backends.base import Timeouts
from turnout.errors import (
    BackendConnectionError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeoutError,
)
from turnout.testing.scripted import Rule, Script, ScriptedBackend, ScriptedServer, Step
from turnout.types import ChatRequest


def req(text: str = "hello") -> ChatRequest:
    return ChatRequest(model="auto", messages=[{"role": "user", "content": text}])


def test_rules_then_queue_then_default():
    script = Script(
        Step(text="default"),
        queue=[Step(text="q1"), Step(text="q2")],
        rules=[Rule(match=r"boom\d", step=Step(text="rule")), Rule(match="", model="special", step=Step(text="m"))],
    )
    order = [
        script.next_step(p, model).text for p, model in [("x", "a"), ("boom7", "a"), ("x", "special"), ("x", "a"), ("x", "a")]
    ]
    assert order == ["q1", "rule", "m", "q2", "default"]


def test_script_from_dict_rejects_unknown_fields():
    s = Script.from_dict(
        {
            "default": {"text": "hi", "latency": 0.01},
            "queue": [{"fault": "status", "status": 503}],
            "rules": [{"match": "boom", "step": {"fault": "reset"}}],
        }
    )
    assert s.default.latency == 0.01 and s.queue[0].status == 503 and s.rules[0].step.fault == "reset"
    with pytest.raises(ValueError, match="latency_ms"):
        Script.from_dict({"default": {"latency_ms": 20}})
    with pytest.raises(ValueError, match="unknown fault"):
        Step(fault="explode")


@pytest.mark.parametrize(
    ("step", "error"),
    [
        (Step(fault="status", status=429), BackendStatusError),
        (Step(fault="reset"), BackendConnectionError),
        (Step(fault="malformed"), BackendProtocolError),
        (Step(fault="hang"), BackendTimeoutError),
    ],
)
async def test_backend_face_raises_what_real_backends_raise(step, error):
    b = ScriptedBackend("fake", [step])
    with pytest.raises(error):
        await b.complete(req(), model="m", timeouts=Timeouts(1, 0.05, 1))
    assert b.count == 1
    assert (await b.complete(req(), model="m")).content == Step().text  # queue used up: default answers


async def test_backend_face_stream_and_cut():
    b = ScriptedBackend("fake", Script(Step(text="a b c d", prompt_tokens=3), queue=[Step(fault="cut", text="a b c d")]))
    seen = []
    with pytest.raises(BackendProtocolError):
        async for c in b.stream(req(), model="m"):
            seen.append(c.text)
    assert seen == ["a ", "b "]
    chunks = [c async for c in b.stream(req(), model="m")]
    assert "".join(c.text for c in chunks) == "a b c d"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage.prompt_tokens == 3
    assert chunks[-1].usage.completion_tokens == 4
    await b.aclose()
    assert b.closed


async def test_backend_face_latency_and_slow_respect_timeouts():
    b = ScriptedBackend("fake", Step(text="x y z", slow=0.05))
    with pytest.raises(BackendTimeoutError) as info:
        async for _ in b.stream(req(), model="m", timeouts=Timeouts(1, 1, 0.07)):
            pass
    assert info.value.phase == "total"
    t0 = time.perf_counter()
    await ScriptedBackend("slow", Step(latency=0.1)).complete(req(), model="m")
    assert time.perf_counter() - t0 >= 0.1


async def test_backend_face_counts_calls_cancelled_before_they_answered():
    b = ScriptedBackend("fake", Step(text="a b c", latency=0.05))
    await b.complete(req(), model="m")
    assert [c.text async for c in b.stream(req(), model="m")][-1] == ""  # answered in full: not cancelled
    assert b.cancelled == 0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):  # the caller gives up during the latency
            await b.complete(req(), model="m")
    stream = b.stream(req(), model="m")
    assert (await anext(stream)).text == "a "
    await stream.aclose()  # the caller leaves mid-stream
    assert b.cancelled == 2 and b.count == 4


def test_server_models_health_and_unknown_route():
    with ScriptedServer(models=["a", "b"]) as srv:
        with httpx.Client(base_url=srv.root_url) as c:
            assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["a", "b"]
            assert c.get("/health").status_code == 200
            assert c.post("/v1/embeddings", json={}).status_code == 404
        assert srv.count == 0  # probes are not completion attempts
    assert srv._thread is None  # stopped


def test_server_counts_each_attempt_and_logs_the_body():
    with ScriptedServer(Script(queue=[Step(fault="status", status=503)])) as srv:
        with httpx.Client(base_url=srv.base_url) as c:
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            assert c.post("/chat/completions", json=body).status_code == 503
            r = c.post("/chat/completions", json=body)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == Step().text
        assert srv.count == 2
        assert [r.step.fault for r in srv.requests] == ["status", None]
        assert srv.requests[0].body == body


def test_server_latency_is_applied():
    with ScriptedServer(Step(latency=0.15)) as srv, httpx.Client(base_url=srv.base_url) as c:
        t0 = time.perf_counter()
        c.post("/chat/completions", json={"model": "m", "messages": []})
        assert time.perf_counter() - t0 >= 0.15


def test_standalone_process_serves(tmp_path):
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"default": {"text": "from file"}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "turnout.testing.scripted", "--port", "0", "--script", str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.strip().rsplit(" ", 1)[1]
        r = httpx.post(url + "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
        assert r.json()["choices"][0]["message"]["content"] == "from file"
    finally:
        proc.terminate()
        proc.wait(5)
