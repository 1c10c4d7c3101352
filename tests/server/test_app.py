"""turnout's HTTP surface driven by the official openai client against a real uvicorn."""

from __future__ import annotations

import sqlite3

import httpx
import openai
import pytest

from turnout.gateway import Gateway, ModelTarget
from turnout.gateway.routes import Price, RouteRuntime
from turnout.routing.policy import Policy
from turnout.testing.scripted import Rule, Script, ScriptedBackend, ScriptedServer, Step

from server_helpers import Served, fleet_config, free_port

MSG = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def upstreams():
    a = ScriptedServer(
        Script(
            default=Step(text="alpha answer here", prompt_tokens=7, completion_tokens=3),
            rules=[
                Rule(match="slowpoke", step=Step(latency=2.0)),
                Rule(match="fail5xx", step=Step(fault="status", status=503)),
                Rule(match="resetme", step=Step(fault="reset")),
                Rule(match="garbage", step=Step(fault="malformed")),
                Rule(match="cutme", step=Step(text="w1 w2 w3 w4 w5 w6", fault="cut")),
            ],
        )
    ).start()
    b = ScriptedServer(Step(text="beta answer", prompt_tokens=5, completion_tokens=2)).start()
    yield a, b
    a.stop()
    b.stop()


def test_non_stream_and_stream_through_route_with_headers(serve, upstreams) -> None:
    a, b = upstreams
    srv = serve(fleet_config({"alpha": a.base_url, "beta": b.base_url}))
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MSG)
    resp = raw.parse()
    assert resp.choices[0].message.content == "alpha answer here"
    assert raw.headers["x-turnout-route"] == "auto" and raw.headers["x-turnout-model"] == "alpha"
    assert len(raw.headers["x-turnout-request-id"]) == 32
    chunks = list(client.chat.completions.create(model="beta", messages=MSG, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.replace(" ", "") == "betaanswer"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    models = {m.id for m in client.models.list()}
    assert models == {"auto", "alpha", "beta"}


@pytest.mark.parametrize("trigger", ["slowpoke", "fail5xx", "resetme", "garbage"])
def test_faults_fall_back_transparently(serve, upstreams, trigger: str, tmp_path) -> None:
    a, b = upstreams
    srv = serve(fleet_config({"alpha": a.base_url, "beta": b.base_url}, request_log=str(tmp_path / "log.sqlite")))
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    before_a, before_b = a.count, b.count
    raw = client.chat.completions.with_raw_response.create(model="alpha", messages=[{"role": "user", "content": trigger}])
    assert raw.parse().choices[0].message.content == "beta answer" and raw.headers["x-turnout-model"] == "beta"
    retried = trigger in ("slowpoke", "fail5xx", "resetme", "garbage")
    assert a.count - before_a == (2 if retried else 1) and b.count - before_b == 1
    # the same before the first streamed byte
    stream = client.chat.completions.create(model="alpha", messages=[{"role": "user", "content": trigger}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).replace(" ", "") == "betaanswer"
    # no lost request: both are logged as answered by beta after alpha failed
    log = srv.gateway.request_log
    log.flush()
    rows = log.query(limit=None)
    assert len(rows) == 2 and all(
        r.status == "ok" and r.model == "beta" and r.fallbacks_tried == ["beta"] and r.http_status == 200 for r in rows
    )
    assert all(r.cost_usd and r.cost_usd > 0 for r in rows)


def test_stream_cut_after_first_byte_ends_with_error_event_and_done(serve, upstreams) -> None:
    a, b = upstreams
    srv = serve(fleet_config({"alpha": a.base_url, "beta": b.base_url}))
    with httpx.stream(
        "POST",
        srv.base_url + "/chat/completions",
        json={"model": "alpha", "stream": True, "messages": [{"role": "user", "content": "cutme"}]},
        timeout=10,
    ) as r:
        assert r.status_code == 200 and r.headers["x-turnout-model"] == "alpha"
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and '"error"' in events[-2] and "upstream_protocol" in events[-2]
    assert any('"w1' in e or "w1" in e for e in events[:-2])
    assert b.count == 0  # committed to alpha: no switch after bytes were sent


def test_all_backends_failed_is_502_listing_each(serve, upstreams, tmp_path) -> None:
    a, _ = upstreams
    srv = serve(fleet_config({"alpha": a.base_url}, request_log=str(tmp_path / "log.sqlite")))
    r = httpx.post(
        srv.base_url + "/chat/completions", json={"model": "alpha", "messages": [{"role": "user", "content": "fail5xx"}]}
    )
    assert r.status_code == 502
    failures = r.json()["error"]["failures"]
    assert len(failures) == 2 and all(f["status"] == 503 and f["backend"] == "b-alpha" for f in failures)
    t = httpx.post(
        srv.base_url + "/chat/completions", json={"model": "alpha", "messages": [{"role": "user", "content": "slowpoke"}]}
    )
    assert t.status_code == 504 and t.json()["error"]["type"] == "all_backends_failed"
    bad = httpx.post(srv.base_url + "/chat/completions", content=b"{oops")
    assert bad.status_code == 400
    log = srv.gateway.request_log
    log.flush()
    statuses = sorted((r.status, r.error_kind, r.http_status) for r in log.query(limit=None))
    assert statuses == [
        ("error", "all_backends_failed", 502),
        ("error", "all_backends_failed", 504),
        ("error", "invalid_request_error", 400),
    ]
    fb = httpx.post(srv.base_url + "/feedback", json={"request_id": r.headers["x-turnout-request-id"], "score": 0.5})
    assert fb.status_code == 200
    log.flush()
    assert [e.score for e in log.query(limit=None) if e.id == r.headers["x-turnout-request-id"]] == [0.5]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[]", 400, None),
        (b'{"model": "auto"}', 400, "messages"),
        (b'{"model": "auto", "messages": []}', 400, "messages"),
        (b'{"model": "auto", "messages": [{"role": "wizard", "content": "x"}]}', 400, "messages[0].role"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', 400, "temperature"),
        (b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
        (b'{"model": "auto", "messages": [{"role": "user", "content": "' + b"x" * 5000 + b'"}]}', 413, None),
    ],
)
def test_bad_input_is_a_4xx_openai_error(serve, upstreams, body: bytes, status: int, param: str | None) -> None:
    a, _ = upstreams
    srv = serve(fleet_config({"alpha": a.base_url}), max_body_bytes=4096)
    r = httpx.post(srv.base_url + "/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["param"] == param
    assert r.headers["x-turnout-request-id"]


def test_openai_client_raises_typed_errors(serve, upstreams) -> None:
    a, _ = upstreams
    srv = serve(fleet_config({"alpha": a.base_url}))
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="auto", messages=[])


def test_route_dry_run_calls_no_model(serve, upstreams) -> None:
    a, b = upstreams
    srv = serve(fleet_config({"alpha": a.base_url, "beta": b.base_url}))
    before = a.count + b.count
    r = httpx.post(srv.base_url + "/route", json={"model": "auto", "messages": MSG})
    d = r.json()
    assert r.status_code == 200 and d["model"] == "alpha" and d["router"] == "prior" and d["lam"] == 0.0
    assert {c["model"] for c in d["candidates"]} == {"alpha", "beta"}
    assert all({"quality", "cost", "utility", "excluded"} <= set(c) for c in d["candidates"])
    assert d["elapsed_ms"] >= 0 and d["fallbacks"] == ["beta"] and a.count + b.count == before


def test_readyz_names_a_backend_that_refused_connections_at_start_up(serve_started, upstreams) -> None:
    a, _ = upstreams
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    srv = serve_started(fleet_config({"alpha": a.base_url, "gone": down}))
    r = httpx.get(srv.root + "/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True and list(r.json()["unreachable_backends"]) == ["b-gone"]
    # its model fails over to the next in the chain meanwhile; the healthy one answers
    assert httpx.post(srv.base_url + "/chat/completions", json={"model": "alpha", "messages": MSG}).status_code == 200


def test_health_ready_metrics_openapi(serve, upstreams) -> None:
    a, _ = upstreams
    srv = serve(fleet_config({"alpha": a.base_url}))
    httpx.post(srv.base_url + "/chat/completions", json={"model": "alpha", "messages": MSG})
    assert httpx.get(srv.root + "/healthz").status_code == 200
    assert httpx.get(srv.root + "/readyz").json() == {"ready": True}
    m = httpx.get(srv.root + "/metrics")
    assert m.status_code == 200 and "alpha" in m.text
    spec = httpx.get(srv.root + "/openapi.json").json()
    assert spec["openapi"].startswith("3.") and "/v1/chat/completions" in spec["paths"]


def test_keys_401_403_429_and_spend(serve, upstreams, monkeypatch) -> None:
    a, b = upstreams
    monkeypatch.setenv("K_RICH", "rich-key")
    monkeypatch.setenv("K_POOR", "poor-key")
    cfg = fleet_config(
        {"alpha": a.base_url, "beta": b.base_url},
        keys=[
            {"name": "rich", "key_env": "K_RICH", "budget_usd": 100, "allowed": ["auto"]},
            {"name": "poor", "key_env": "K_POOR", "budget_usd": 0.000001},
        ],
    )
    srv = serve(cfg)
    rich = openai.OpenAI(base_url=srv.base_url, api_key="rich-key", max_retries=0)
    assert rich.chat.completions.create(model="auto", messages=MSG).choices[0].message.content == "alpha answer here"
    with pytest.raises(openai.PermissionDeniedError):
        rich.chat.completions.create(model="beta", messages=MSG)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.base_url, api_key="wrong", max_retries=0).chat.completions.create(model="auto", messages=MSG)
    poor = openai.OpenAI(base_url=srv.base_url, api_key="poor-key", max_retries=0)
    poor.chat.completions.create(model="beta", messages=MSG)  # spends 5*1 + 2*2 = 9e-6 USD > its budget
    with pytest.raises(openai.RateLimitError):
        poor.chat.completions.create(model="beta", messages=MSG)


def test_client_disconnect_mid_stream_is_logged_as_cancelled(serve) -> None:
    up = ScriptedServer(Step(text=" ".join(f"w{i}" for i in range(200)), slow=0.02)).start()
    try:
        srv = serve(fleet_config({"alpha": up.base_url}))
        with httpx.stream(
            "POST", srv.base_url + "/chat/completions", timeout=10, json={"model": "alpha", "stream": True, "messages": MSG}
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # leave after the first event: the client hangs up
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            metrics = httpx.get(srv.root + "/metrics").text
            if 'status="cancelled"' in metrics:
                break
            time.sleep(0.05)
        assert 'status="cancelled"' in metrics
    finally:
        up.stop()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"seed": "42"}, "seed"),
        ({"stop": 5}, "stop"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"top_logprobs": 5}, "top_logprobs"),
        ({"presence_penalty": 10}, "presence_penalty"),
        ({"logit_bias": {"1": 500}}, "logit_bias"),
        ({"user": 42}, "user"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": ["a"]}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]}, "messages[0].content[0].type"),
    ],
)
def test_a_wrong_typed_field_is_a_400_before_anything_is_routed_or_sent(serve, upstreams, tmp_path, fields, param) -> None:
    a, _ = upstreams
    srv = serve(fleet_config({"alpha": a.base_url}, request_log=str(tmp_path / "log.sqlite")))
    before = a.count
    for path, stream in (("/chat/completions", False), ("/chat/completions", True), ("/route", False)):
        r = httpx.post(srv.base_url + path, json={"model": "auto", "messages": MSG, "stream": stream, **fields})
        assert r.status_code == 400, (path, stream, r.text)
        err = r.json()["error"]
        assert (err["type"], err["param"]) == ("invalid_request_error", param), (path, stream, err)
        assert len(r.headers["x-turnout-request-id"]) == 32
    assert a.count == before, "a request that failed validation reached the upstream"
    # the two rejected chat requests are logged like every chat request; the dry run logs nothing
    log = srv.gateway.request_log
    log.flush()
    rows = log.query(limit=None)
    assert sorted((r.status, r.error_kind, r.http_status) for r in rows) == [("error", "invalid_request_error", 400)] * 2


class _BuggyRouter:
    """A route's router with a bug: it raises something that is not a TurnoutError."""

    name = "buggy"

    def predict(self, X):
        raise RuntimeError("a bug in a router")


def test_the_route_dry_run_answers_a_bug_as_an_openai_500_with_the_turnout_headers(upstreams) -> None:
    rt = RouteRuntime(
        name="auto",
        router=_BuggyRouter(),
        router_name="buggy",
        candidates={"m": "m"},  # type: ignore[arg-type]
        prices={"m": Price()},
        policy=Policy(),
    )
    gw = Gateway({"m": ModelTarget(name="m", backend=ScriptedBackend("up", Step(text="hi")), upstream="m")}, {"auto": rt})
    with Served(gw) as srv:
        for path in ("/route", "/chat/completions"):
            r = httpx.post(srv.base_url + path, json={"model": "auto", "messages": MSG})
            assert r.status_code == 500 and r.headers["content-type"] == "application/json", (path, r.text)
            assert r.json()["error"]["type"] == "internal_error" and len(r.headers["x-turnout-request-id"]) == 32
        # the connection survives the bug: the next request on it is answered
        with httpx.Client(base_url=srv.base_url) as client:
            assert client.post("/route", json={"model": "auto", "messages": MSG}).status_code == 500
            assert client.post("/route", json={"model": "m", "messages": MSG}).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("POST", "/v1/completions", 404, None),
        ("POST", "/v1/embeddings", 404, None),
        ("GET", "/nope", 404, None),
        ("GET", "/v1/chat/completions", 405, "POST"),
        ("PUT", "/v1/chat/completions", 405, "POST"),
        ("POST", "/v1/models", 405, "GET"),
        ("GET", "/v1/feedback", 405, "POST"),
        ("DELETE", "/v1/route", 405, "POST"),
    ],
)
def test_unknown_paths_and_wrong_methods_are_openai_errors_with_the_turnout_headers(
    serve, upstreams, method, path, status, allow
) -> None:
    a, _ = upstreams
    srv = serve(fleet_config({"alpha": a.base_url}))
    r = httpx.request(method, srv.root + path, json={"model": "alpha", "messages": MSG})
    assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == (
        "not_found" if status == 404 else "method_not_allowed"
    )
    assert path in err["message"]
    assert len(r.headers["x-turnout-request-id"]) == 32
    assert r.headers["x-turnout-route"] == "-" and r.headers["x-turnout-model"] == "-"
    if allow is not None:
        assert allow in r.headers["allow"] and allow in err["message"]


def test_models_retrieve_returns_one_model_and_404s_an_unknown_id(serve, upstreams) -> None:
    a, b = upstreams
    srv = serve(fleet_config({"alpha": a.base_url, "beta": b.base_url}))
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    for name in ("auto", "alpha", "beta"):
        m = client.models.retrieve(name)
        assert (m.id, m.object) == (name, "model")
    assert client.models.retrieve("auto").owned_by == "turnout"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("org/gpt-9")
    assert err.value.body["type"] == "model_not_found" and "alpha" in err.value.body["message"]
    r = httpx.get(srv.base_url + "/models/nope")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model" and len(r.headers["x-turnout-request-id"]) == 32


def test_feedback_needs_the_key_and_scores_only_that_keys_requests(serve, upstreams, tmp_path, monkeypatch) -> None:
    a, b = upstreams
    monkeypatch.setenv("K_ALICE", "sk-alice")
    monkeypatch.setenv("K_BOB", "sk-bob")
    srv = serve(
        fleet_config(
            {"alpha": a.base_url, "beta": b.base_url},
            request_log=str(tmp_path / "log.sqlite"),
            keys=[{"name": "alice", "key_env": "K_ALICE"}, {"name": "bob", "key_env": "K_BOB"}],
        )
    )
    alice, bob = {"authorization": "Bearer sk-alice"}, {"authorization": "Bearer sk-bob"}
    answer = httpx.post(srv.base_url + "/chat/completions", headers=alice, json={"model": "alpha", "messages": MSG})
    assert answer.status_code == 200
    rid = answer.headers["x-turnout-request-id"]

    def feedback(headers: dict[str, str], request_id: str = rid) -> httpx.Response:
        return httpx.post(srv.base_url + "/feedback", headers=headers, json={"request_id": request_id, "score": 0.9})

    for headers in ({}, {"authorization": "Bearer sk-wrong"}):
        r = feedback(headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_api_key"
    r = feedback(bob)  # bob may not score alice's request, nor learn that it exists
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found" and r.json()["error"]["param"] == "request_id"
    assert feedback(alice).status_code == 200
    log = srv.gateway.request_log
    log.flush()
    assert [(e.id, e.key_name, e.score) for e in log.query(limit=None)] == [(rid, "alice", 0.9)]


def test_feedback_for_an_unknown_request_is_a_404_that_names_the_header_to_use(serve, upstreams, tmp_path) -> None:
    a, _ = upstreams
    srv = serve(fleet_config({"alpha": a.base_url}, request_log=str(tmp_path / "log.sqlite")))
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="alpha", messages=MSG)
    completion_id = raw.parse().id
    assert completion_id.startswith("chatcmpl-")
    for request_id in ("abc", completion_id):
        r = httpx.post(srv.base_url + "/feedback", json={"request_id": request_id, "score": 1})
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["type"] == "not_found" and err["param"] == "request_id" and "x-turnout-request-id" in err["message"]
    assert "'id' of a chat completion" in r.json()["error"]["message"]
    too_long = httpx.post(srv.base_url + "/feedback", json={"request_id": "x" * 200, "score": 1})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "request_id"
    # the answer's own id is accepted straight after the answer (the row may still be queued for the disk)
    ok = httpx.post(srv.base_url + "/feedback", json={"request_id": raw.headers["x-turnout-request-id"], "score": 1})
    assert ok.status_code == 200 and ok.json() == {
        "request_id": raw.headers["x-turnout-request-id"],
        "score": 1.0,
        "stored": True,
    }
    log = srv.gateway.request_log
    log.flush()
    assert [e.score for e in log.query(limit=None)] == [1.0]
    # nothing was stored for the unknown ids
    with sqlite3.connect(tmp_path / "log.sqlite") as conn:
        assert conn.execute("SELECT request_id FROM feedback").fetchall() == [(raw.headers["x-turnout-request-id"],)]
