"""Decision rules end to end: the official openai client against uvicorn; a keyword and a domain decision send
requests to another model (streamed and not), explained in /v1/route, the x-turnout-rule header and the log."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from turnout.config import load_config
from turnout.gateway.requestlog import RequestLog
from turnout.testing.scripted import ScriptedServer, Step

BANKING = [
    "how do I reset my card pin",
    "what is my account balance",
    "transfer money to my savings account",
    "my debit card was declined",
    "open a new checking account",
    "how much is the overdraft fee",
    "freeze my credit card please",
    "when will my bank transfer arrive",
    "order a new bank card",
    "dispute a charge on my card statement",
]
TRAVEL = [
    "book a flight to rome",
    "find a hotel near the airport",
    "what gate does my flight leave from",
    "cancel my hotel reservation",
    "how long is the flight to tokyo",
    "rent a car at the airport",
    "check in for my flight",
    "is my flight delayed",
    "book a train ticket to paris",
    "upgrade my seat",
]


@pytest.fixture
def fleet(tmp_path: Path):
    ups = {
        m: ScriptedServer(Step(text=f"{m} says hi", prompt_tokens=5, completion_tokens=3)).start()
        for m in ("general", "coder", "banker")
    }
    examples = tmp_path / "domains.jsonl"
    examples.write_text(
        "\n".join(json.dumps({"text": t, "label": lab}) for lab, ts in (("banking", BANKING), ("travel", TRAVEL)) for t in ts),
        encoding="utf-8",
    )
    backends = "\n".join(f'  b-{m}: {{protocol: openai, base_url: "{u.base_url}"}}' for m, u in ups.items())
    models = "\n".join(
        f"  {m}: {{backend: b-{m}, upstream_model: scripted, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}" for m in ups
    )
    path = tmp_path / "turnout.yaml"
    path.write_text(
        f"server: {{request_log: {tmp_path / 'log.sqlite'}, metrics: true}}\n"
        f"backends:\n{backends}\nmodels:\n{models}\n"
        + textwrap.dedent("""\
        routes:
          auto:
            router: {type: prior, params: {quality: {general: 0.9, coder: 0.5, banker: 0.5}}}
            candidates: [general, coder, banker]
            lambda: 0
        signals:
          kw: {type: keywords, params: {sets: {code: [python, javascript, "stack trace"]}}}
          domain: {type: domain, params: {examples: domains.jsonl, embedder: hashing}}
          lang: {type: language, always: true}
        decisions:
          - name: code-questions
            priority: 20
            when: {signal: kw.code, is: true}
            use: {route: coder}
            plugins: [{type: add_headers, params: {headers: {x-answered-as: code}}}]
          - name: banking
            priority: 10
            when: {all: [{signal: domain, eq: banking}, {signal: domain.probability, gte: 0.5}]}
            use: {candidates: [banker]}
        """)
    )
    yield load_config(path), ups
    for u in ups.values():
        u.stop()


def ask(client: openai.OpenAI, text: str, stream: bool) -> tuple[str, Any]:
    msgs = [{"role": "user", "content": text}]
    if stream:
        with client.chat.completions.with_streaming_response.create(model="auto", messages=msgs, stream=True) as r:
            body = "".join(c.choices[0].delta.content or "" for c in r.parse() if c.choices)
            return body, r.headers
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=msgs)
    return raw.parse().choices[0].message.content or "", raw.headers


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_keyword_and_domain_decisions_through_the_openai_client(serve, fleet, stream: bool) -> None:
    cfg, ups = fleet
    srv = serve(cfg)
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0)

    text, h = ask(client, "why does my python script print a stack trace", stream)
    assert text.replace(" ", "") == "codersayshi" and h["x-turnout-model"] == "coder"
    assert h["x-turnout-rule"] == "code-questions" and h["x-answered-as"] == "code"
    assert h["x-turnout-route"] == "passthrough"  # the rule sent it to the model coder, as a redirect does

    text, h = ask(client, "my debit card was declined at the shop", stream)
    assert text.replace(" ", "") == "bankersayshi" and h["x-turnout-rule"] == "banking"
    assert h["x-turnout-model"] == "banker" and h["x-turnout-route"] == "auto"

    text, h = ask(client, "is my flight to rome delayed", stream)
    assert h["x-turnout-model"] == "general" and "x-turnout-rule" not in h and "x-answered-as" not in h
    assert ups["coder"].count == 1 and ups["banker"].count == 1 and ups["general"].count == 1

    # /v1/route explains without calling a model: every rule evaluated, with why, and every signal value
    before = sum(u.count for u in ups.values())
    r = httpx.post(
        srv.base_url + "/route",
        json={"model": "auto", "messages": [{"role": "user", "content": "transfer money to my savings account"}]},
    )
    assert r.status_code == 200 and sum(u.count for u in ups.values()) == before
    d = r.json()
    assert d["rule"] == "banking" and d["model"] == "banker"
    rule = next(x for x in d["reasons"] if x["kind"] == "rule" and x["data"].get("evaluated"))
    tried = {e["decision"]: e for e in rule["data"]["evaluated"]}
    assert (
        tried["code-questions"]["matched"] is False and "kw.code is true (kw.code = false): no" == tried["code-questions"]["why"]
    )
    assert tried["banking"]["matched"] is True and "domain = banking (domain = banking): yes" in tried["banking"]["why"]
    assert d["signals"]["domain"] == "banking" and d["signals"]["lang"] == "en" and d["signals"]["kw"] == []

    # the request log keeps the decision: rule, signal values, the reasons with the rules evaluated
    log = srv.gateway.request_log
    assert isinstance(log, RequestLog)
    log.flush()
    rows = {row.prompt: row for row in log.query(limit=None)}
    coded = rows["why does my python script print a stack trace"]
    assert coded.model == "coder" and coded.decision["rule"] == "code-questions"
    assert coded.decision["signals"]["kw.code"] is True and "lang" in coded.decision["signals"]
    logged_rule = next(x for x in coded.decision["reasons"] if x["kind"] == "rule")
    assert logged_rule["data"]["matched"] == "code-questions" and logged_rule["data"]["evaluated"]
    plain = rows["is my flight to rome delayed"]
    assert plain.decision["rule"] is None and plain.decision["signals"]["domain.nearest"] == "travel"
