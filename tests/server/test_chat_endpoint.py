"""The raw ASGI chat endpoint's own edges: other methods, bugs, disconnects (between slow chunks, or while a
whole answer is awaited), big bodies."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from turnout.backends.base import Backend, Timeouts
from turnout.gateway import Gateway, ModelTarget
from turnout.gateway.metrics import Metrics
from turnout.gateway.requestlog import RequestLog
from turnout.testing.scripted import ScriptedBackend, ScriptedServer, Step

from server_helpers import Served, fleet_config

MSG = [{"role": "user", "content": "hello"}]


class Buggy(Backend):
    """A backend with a bug: it raises something that is not a TurnoutError."""

    name = "buggy"
    protocol = "buggy"

    async def complete(self, request, *, model, timeouts=None):
        raise RuntimeError("a bug, not a provider error")

    async def stream(self, request, *, model, timeouts=None):
        raise RuntimeError("a bug, not a provider error")
        yield  # pragma: no cover

    async def aclose(self) -> None:
        pass


def test_other_methods_get_405_and_a_trailing_slash_still_reaches_the_endpoint(serve) -> None:
    up = ScriptedServer(Step(text="hi")).start()
    try:
        srv = serve(fleet_config({"alpha": up.base_url}))
        assert httpx.get(srv.base_url + "/chat/completions").status_code == 405
        r = httpx.post(srv.base_url + "/chat/completions/", json={"model": "alpha", "messages": MSG}, follow_redirects=True)
        assert r.status_code == 200 and r.headers["x-turnout-model"] == "alpha"
    finally:
        up.stop()


def test_a_bug_is_a_500_in_openai_form_with_the_turnout_headers() -> None:
    gw = Gateway({"m": ModelTarget(name="m", backend=Buggy(), upstream="m")}, metrics=Metrics())
    with Served(gw) as srv:
        for stream in (False, True):
            r = httpx.post(srv.base_url + "/chat/completions", json={"model": "m", "messages": MSG, "stream": stream})
            assert r.status_code == 500
            assert r.json()["error"]["type"] == "internal_error"
            assert len(r.headers["x-turnout-request-id"]) == 32
        metrics = httpx.get(srv.root + "/metrics").text
        assert 'turnout_errors_total{kind="internal_error"} 2.0' in metrics


def test_disconnect_while_upstream_is_between_slow_chunks_cancels_it_at_once(serve, tmp_path) -> None:
    up = ScriptedServer(Step(text="first second third", slow=5.0)).start()
    try:
        srv = serve(
            fleet_config(
                {"alpha": up.base_url},
                request_log=str(tmp_path / "log.sqlite"),
                backend_extra={"timeouts": {"connect": 1, "first_token": 2, "total": 30}},
            )
        )
        with httpx.stream(
            "POST", srv.base_url + "/chat/completions", timeout=10, json={"model": "alpha", "stream": True, "messages": MSG}
        ) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # hang up after the first event; the next one is 5 s away
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.0 and 'status="cancelled"' not in httpx.get(srv.root + "/metrics").text:
            time.sleep(0.05)
        assert time.monotonic() - t0 < 2.0, "the upstream stream was not cancelled when the client left"
        log = srv.gateway.request_log
        log.flush()
        (row,) = log.query(limit=None)
        assert row.status == "cancelled" and row.model == "alpha"
        assert row.http_status == 200  # the client had its status line (and a chunk) before it left
    finally:
        up.stop()


def test_a_client_that_hangs_up_on_a_non_streamed_request_cancels_the_upstream_call_and_no_fallback_runs(tmp_path) -> None:
    # alpha would fail after 1.5 s and the chain would then fall back to beta: for nobody, once the client has left
    alpha = ScriptedBackend("up-alpha", Step(latency=1.5, fault="status", status=503))
    beta = ScriptedBackend("up-beta", Step(text="too late"))
    slow = Timeouts(connect=1, first_token=10, total=10)
    gw = Gateway(
        {
            "alpha": ModelTarget(name="alpha", backend=alpha, upstream="alpha", fallbacks=["beta"], attempts=1, timeouts=slow),
            "beta": ModelTarget(name="beta", backend=beta, upstream="beta", timeouts=slow),
        },
        metrics=Metrics(),
        request_log=RequestLog(tmp_path / "log.sqlite"),
    )
    with Served(gw) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", timeout=0.3, max_retries=0)
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="alpha", messages=MSG)  # gives up after 0.3 s and hangs up
        while time.monotonic() - t0 < 1.2 and 'status="cancelled"' not in httpx.get(srv.root + "/metrics").text:
            time.sleep(0.02)
        assert alpha.cancelled == 1, "the upstream call was not cancelled when the client left"
        assert time.monotonic() - t0 < 1.2  # well before alpha's 1.5 s answer
        time.sleep(max(0.0, t0 + 2.0 - time.monotonic()))  # past the moment alpha would have failed over
        assert beta.count == 0 and alpha.count == 1, "a fallback (or a retry) ran after the client had left"
        metrics = httpx.get(srv.root + "/metrics").text
        assert 'status="cancelled"' in metrics and "turnout_fallbacks_total{" not in metrics
        gw.request_log.flush()
        (row,) = gw.request_log.query(limit=None)
        assert (row.status, row.error_kind, row.model, row.fallbacks_tried) == ("cancelled", "client_disconnect", "alpha", [])
        assert row.http_status is None, "nothing was sent to the client that left, so no status was"
        # the endpoint still answers whoever stays
        ok = httpx.post(srv.base_url + "/chat/completions", json={"model": "beta", "messages": MSG})
        assert ok.status_code == 200 and ok.headers["x-turnout-model"] == "beta"


async def test_a_cancellation_from_outside_still_propagates_through_the_non_streamed_path() -> None:
    # the server cancelling a request (shutdown) is not a hang-up: the endpoint must not swallow it
    import asyncio
    import json

    from turnout.server.chat import ChatEndpoint

    backend = ScriptedBackend("up", Step(latency=30))
    endpoint = ChatEndpoint(
        Gateway({"m": ModelTarget(name="m", backend=backend, upstream="m", timeouts=Timeouts(1, 60, 60))}), max_body_bytes=1 << 20
    )
    body = json.dumps({"model": "m", "messages": MSG}).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client never leaves
        raise AssertionError("unreachable")

    async def send(message: dict) -> None:
        sent.append(message)

    task = asyncio.create_task(endpoint({"type": "http", "headers": []}, receive, send))
    while not backend.count:
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.cancelled == 1 and sent == []


def test_a_body_sent_in_many_pieces_is_read_whole_and_limited(serve) -> None:
    up = ScriptedServer(Step(text="ok")).start()
    try:
        srv = serve(fleet_config({"alpha": up.base_url}), max_body_bytes=2048)
        body = b'{"model": "alpha", "messages": [{"role": "user", "content": "' + b"y" * 1500 + b'"}]}'

        def pieces(data: bytes, size: int = 100):
            for i in range(0, len(data), size):
                yield data[i : i + size]

        # no content-length: chunked upload, so the limit is enforced while reading
        ok = httpx.post(srv.base_url + "/chat/completions", content=pieces(body))
        assert ok.status_code == 200, ok.text
        too_big = httpx.post(srv.base_url + "/chat/completions", content=pieces(body + b" " * 1000))
        assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "payload_too_large"
    finally:
        up.stop()


def test_a_fallback_outside_the_keys_allowed_list_is_skipped_and_listed_in_the_502(serve, monkeypatch) -> None:
    a = ScriptedServer(Step(fault="status", status=503)).start()
    b = ScriptedServer(Step(text="from beta, which alice may not use")).start()
    try:
        monkeypatch.setenv("K_ALICE", "sk-alice")
        srv = serve(
            fleet_config(
                {"alpha": a.base_url, "beta": b.base_url}, keys=[{"name": "alice", "key_env": "K_ALICE", "allowed": ["alpha"]}]
            )
        )
        auth = {"authorization": "Bearer sk-alice"}
        r = httpx.post(srv.base_url + "/chat/completions", headers=auth, json={"model": "alpha", "messages": MSG})
        assert r.status_code == 502 and b.count == 0
        failures = r.json()["error"]["failures"]
        assert [f["type"] for f in failures] == ["upstream_status", "upstream_status", "model_not_allowed"]
        assert "may not use 'beta'" in failures[-1]["message"]
        d = httpx.post(srv.base_url + "/route", headers=auth, json={"model": "alpha", "messages": MSG}).json()
        assert d["fallbacks"] == ["beta"] and "fallback beta will be skipped: key 'alice' may not use it" in [
            r["detail"] for r in d["reasons"]
        ]
    finally:
        a.stop()
        b.stop()


def test_openai_client_streams_tool_calls_through_turnout_from_an_anthropic_upstream(serve, monkeypatch) -> None:
    import json

    import openai

    from turnout.config import parse_config, resolve

    calls = ({"id": "toolu_1", "name": "get_weather", "arguments": json.dumps({"city": "Oslo"})},)
    up = ScriptedServer(Step(text="Checking.", tool_calls=calls), protocol="anthropic").start()
    try:
        monkeypatch.setenv("ANTHROPIC_TEST_KEY", "sk-ant")
        cfg = resolve(
            parse_config(
                {
                    "server": {"request_log": None},
                    "backends": {
                        "claude": {"protocol": "anthropic", "base_url": up.root_url, "api_key_env": "ANTHROPIC_TEST_KEY"}
                    },
                    "models": {"haiku": {"backend": "claude", "upstream_model": "claude-haiku"}},
                },
                source="test.yaml",
            )
        )
        srv = serve(cfg)
        client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        stream = client.chat.completions.create(
            model="haiku",
            messages=[{"role": "user", "content": "weather?"}],
            tools=tools,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        args = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or [])
        names = [tc.function.name for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or [] if tc.function.name]
        assert names == ["get_weather"] and json.loads(args) == {"city": "Oslo"}
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        assert chunks[-1].usage is not None
        whole = client.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "weather?"}], tools=tools)
        assert whole.choices[0].message.tool_calls[0].function.name == "get_weather"
    finally:
        up.stop()


def _sse(srv: Served, body: dict) -> list[dict]:
    """The JSON events of one streamed answer (checked to end with [DONE])."""
    import json

    with httpx.stream("POST", srv.base_url + "/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200, r.read()
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
def test_stream_usage_is_sent_only_when_asked_once_in_a_last_chunk_of_its_own(serve, monkeypatch, protocol: str) -> None:
    from turnout.config import parse_config, resolve

    up = ScriptedServer(Step(text="one two three", prompt_tokens=7, completion_tokens=3), protocol=protocol).start()
    try:
        monkeypatch.setenv("UP_KEY", "sk-up")
        backend = (
            {"protocol": "anthropic", "base_url": up.root_url, "api_key_env": "UP_KEY"}
            if protocol == "anthropic"
            else {"protocol": "openai", "base_url": up.base_url}
        )
        srv = serve(
            resolve(
                parse_config(
                    {
                        "server": {"request_log": None},
                        "backends": {"up": backend},
                        "models": {"alpha": {"backend": "up", "upstream_model": "scripted"}},
                    },
                    source="test.yaml",
                )
            )
        )
        request = {"model": "alpha", "messages": MSG, "stream": True}
        for options in (None, {}, {"include_usage": False}):
            chunks = _sse(srv, request if options is None else {**request, "stream_options": options})
            assert not any("usage" in c for c in chunks), "usage sent to a client that did not ask for it"
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
        chunks = _sse(srv, {**request, "stream_options": {"include_usage": True}})
        with_usage = [c for c in chunks if "usage" in c]
        assert with_usage == [chunks[-1]], "usage must come once, in the last chunk"
        last = chunks[-1]
        assert last["choices"] == [] and last["object"] == "chat.completion.chunk"
        assert last["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
        assert {c["id"] for c in chunks} == {last["id"]} and last["id"]
        assert {c["model"] for c in chunks} == {last["model"]} and {c["created"] for c in chunks} == {last["created"]}
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    finally:
        up.stop()


def test_a_stream_that_fails_after_its_first_chunk_is_logged_with_the_200_its_client_got(serve, tmp_path) -> None:
    up = ScriptedServer(Step(text="w1 w2 w3 w4 w5 w6", fault="cut")).start()
    try:
        srv = serve(fleet_config({"alpha": up.base_url}, request_log=str(tmp_path / "log.sqlite")))
        events = _sse(srv, {"model": "alpha", "messages": MSG, "stream": True})
        assert events[-1]["error"]["type"] == "upstream_protocol"
        bad = httpx.post(srv.base_url + "/chat/completions", json={"model": "alpha", "messages": MSG})
        assert bad.status_code == 502  # the same failure before anything was sent: the client gets a 502
        log = srv.gateway.request_log
        log.flush()
        rows = sorted((r.ttft_s is not None, r.status, r.error_kind, r.http_status) for r in log.query(limit=None))
        assert rows == [(False, "error", "all_backends_failed", 502), (True, "error", "upstream_protocol", 200)]
    finally:
        up.stop()
