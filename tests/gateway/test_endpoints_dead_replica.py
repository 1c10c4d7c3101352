"""A model served by three endpoints keeps serving when one is dead: that endpoint's breaker opens, the model's
state stays closed, no request fails, and the dry run says which endpoint is out of rotation.

Real parts: the gateway built from config, the ``openai`` protocol backend over loopback HTTP to
:class:`ScriptedServer` replicas; the dead replica is a port nobody listens on, or a server that resets every
connection (which also lets the test count what still reaches it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from turnout.backends._net import free_port
from turnout.config import parse_config, resolve
from turnout.gateway import Gateway
from turnout.gateway.builder import build_gateway
from turnout.testing import ScriptedServer, Step
from turnout.types import ChatRequest

FAILURES = 2  # the breaker's threshold in this test's config
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture
def replicas() -> Iterator[list[ScriptedServer]]:
    servers = [ScriptedServer(Step(text=f"replica {i} answers", prompt_tokens=5, completion_tokens=3)).start() for i in range(2)]
    servers.append(ScriptedServer(Step(fault="reset")).start())
    yield servers
    for s in servers:
        s.stop()


def _gateway(urls: list[str], log: Path) -> Gateway:
    data: dict[str, Any] = {
        "server": {"request_log": str(log)},
        "backends": {
            "vllm": {
                "protocol": "openai",
                "base_url": urls[0],
                "timeouts": {"connect": 1, "first_token": 2, "total": 5},
                "retries": {"attempts": 3, "backoff_s": 0.0, "max_backoff_s": 0.0},
                "cooldown": {"failures": FAILURES, "seconds": 60},
            }
        },
        "models": {
            "qwen": {
                "endpoints": [{"backend": "vllm", "base_url": u, "name": f"replica-{i}"} for i, u in enumerate(urls)],
                "balance": {"strategy": "round_robin"},
                "upstream_model": "scripted",
                "price": {"input_per_mtok": 1, "output_per_mtok": 2},
            }
        },
    }
    return build_gateway(resolve(parse_config(data, source="test.yaml")))


@pytest.mark.parametrize("dead", ["refused", "reset"])
async def test_one_dead_endpoint_of_three_opens_its_own_breaker_and_the_model_keeps_serving(
    replicas: list[ScriptedServer], tmp_path: Path, dead: str
) -> None:
    alive = [r.base_url for r in replicas[:2]]
    dead_url = f"http://127.0.0.1:{free_port()}/v1" if dead == "refused" else replicas[2].base_url
    gw = _gateway([alive[0], dead_url, alive[1]], tmp_path / "log.sqlite")
    await gw.start()
    try:
        texts = []
        for i in range(12):
            req = ChatRequest("qwen", MSG, stream=i % 2 == 1)
            if req.stream:
                session = await gw.chat_stream(req)
                texts.append("".join([c.text async for c in session]))
            else:
                resp, _, _ = await gw.chat(req)
                texts.append(resp.content)
        # every request was answered, by the live replicas only
        assert all(t in ("replica 0 answers", "replica 1 answers") for t in texts), texts
        assert {t for t in texts} == {"replica 0 answers", "replica 1 answers"}  # both live ones serve
        t = gw.targets["qwen"]
        states = {e.name: e.breaker.state for e in t.endpoints}
        assert states == {"replica-0": "closed", "replica-1": "open", "replica-2": "closed"}
        assert t.state == "closed"  # the model's: it serves
        if dead == "reset":
            assert replicas[2].count == FAILURES  # out of rotation once its breaker opened
        # the dry run names the endpoint out of rotation and does not call the model unavailable
        d = await gw.route(ChatRequest("qwen", MSG))
        reasons = [r.detail for r in d.reasons if r.kind == "breaker_open"]
        assert reasons == ["qwen: endpoint replica-1 is out of rotation (open)"]
        assert gw.models()[0]["id"] == "qwen" and gw.describe()["models"]["qwen"]["state"] == "closed"
    finally:
        await gw.aclose()
    rows = sorted(gw.request_log.query(limit=None), key=lambda r: r.ts)  # closed: every row written
    assert len(rows) == 12 and all(r.status == "ok" and r.model == "qwen" for r in rows)
    failed = [c for r in rows for c in r.calls if c["status"] == "error"]
    assert len(failed) == FAILURES and {c["endpoint"] for c in failed} == {"replica-1"}
    # a failed try on the dead replica was retried on a live one, in the same request, paid for once
    assert all(r.calls[-1]["status"] == "ok" and r.calls[-1]["endpoint"] != "replica-1" for r in rows)
    assert all(r.cost_usd == pytest.approx(5e-6 + 6e-6) for r in rows)
